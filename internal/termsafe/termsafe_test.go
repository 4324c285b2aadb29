package termsafe_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"relay365/internal/termsafe"
)

const hostile = "\x1b[2J\x1b]0;pwned\x07"

// clean fails if out holds a byte or character a terminal would act on,
// other than the newlines and tabs allowed.
func clean(t *testing.T, what, out string, allowed string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: invalid UTF-8 in %q", what, out)
	}
	for i, r := range out {
		if termsafe.Unsafe(r) && !strings.ContainsRune(allowed, r) {
			t.Errorf("%s: %U at byte %d of %q", what, r, i, out)
		}
	}
}

func TestLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alert-7f3a", "alert-7f3a"},
		{`C:\path ünïcödé`, `C:\path ünïcödé`},
		{hostile, `\x1b[2J\x1b]0;pwned\a`},
		{"a\tb\r\nc\x00d\x7f", `a\tb\r\nc\x00d\x7f`},
		{"csi\u009b31m", `csi\u009b31m`},
		{"rtl\u202eevil", `rtl\u202eevil`},
		{"bad\xff\xfebytes", `bad\xff\xfebytes`},
		{"keep \uFFFD as is", "keep \uFFFD as is"},
	} {
		got := termsafe.Line(tc.in)
		if got != tc.want {
			t.Errorf("Line(%q) = %q, want %q", tc.in, got, tc.want)
		}
		clean(t, "Line", got, "")
	}
}

func TestText(t *testing.T) {
	in := "Subject: " + hostile + "\r\n\r\nline 1\tcol\r\nover\rwrite\n"
	got := termsafe.Text(in)
	want := `Subject: \x1b[2J\x1b]0;pwned\a` + "\n\nline 1\tcol\nover" + `\r` + "write\n"
	if got != want {
		t.Fatalf("Text = %q, want %q", got, want)
	}
	clean(t, "Text", got, "\n\t")
}

func TestIndex(t *testing.T) {
	for in, want := range map[string]int{
		"plain": -1, "ünï": -1, "\uFFFD": -1, "ab\x1b": 2, "\x07": 0, "a\u0085": 1, "x\u2066": 1, "ok\xff": 2, "tab\there": 3,
	} {
		if got := termsafe.Index(in); got != want {
			t.Errorf("Index(%q) = %d, want %d", in, got, want)
		}
	}
}

// What encoding/json leaves as it is (DEL, C1, bidi controls, a raw
// message's invalid bytes) is escaped, and the JSON still decodes to the
// same values.
func TestJSON(t *testing.T) {
	type doc struct {
		ID  string          `json:"id"`
		Raw json.RawMessage `json:"raw"`
	}
	v := doc{ID: hostile + "\x7f\u009b\u202e", Raw: json.RawMessage("{\"s\":\"c1\u009bdel\x7fbad\xff\"}")}
	enc, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got := termsafe.JSON(enc)
	clean(t, "JSON", string(got), "\n")
	var back doc
	if err := json.Unmarshal(got, &back); err != nil || back.ID != v.ID {
		t.Fatalf("decoded %q, %v; want %q", back.ID, err, v.ID)
	}
	var raw struct{ S string }
	if err := json.Unmarshal(back.Raw, &raw); err != nil || raw.S != "c1\u009bdel\x7fbad\uFFFD" {
		t.Fatalf("raw decoded %q, %v", raw.S, err)
	}
	if plain := []byte(`{"id":"a"}`); string(termsafe.JSON(plain)) != string(plain) {
		t.Fatal("clean JSON changed")
	}
}

func TestShorten(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 5, "short"},
		{"longer", 5, "long…"},
		{"ééé", 5, "éé…"},
		{"ééé", 4, "é…"}, // 3 bytes would end inside the second é: one é kept
		{"", 1, ""},
	} {
		if got := termsafe.Shorten(c.s, c.n); got != c.want {
			t.Errorf("Shorten(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}
