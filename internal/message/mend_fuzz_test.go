package message

import (
	"mime"
	"strings"
	"testing"
)

// FuzzMendLongField: MendLongField never panics; what it returns, it
// returns foldable within 998 octets a line (the one thing it is for),
// and an unstructured field reads as the text it came with.
func FuzzMendLongField(f *testing.F) {
	long := strings.Repeat("x", 1100)
	f.Add("Subject", "alert "+long)
	f.Add("X-Alert", "=?utf-8?q?caf=C3=A9?= "+long)
	f.Add("References", strings.Repeat("<a@b.example>", 90))
	f.Add("Content-Type", "text/plain; x="+long)
	f.Add("Subject", "short")
	f.Fuzz(func(t *testing.T, name, value string) {
		if name == "" || strings.ContainsAny(name, ":\r\n \t") || strings.ContainsAny(value, "\r\n") {
			return // one field line, as relay sendmail hands it
		}
		for _, v := range []string{value, value + strings.Repeat("y", 1000)} { // the second: never foldable as it is
			mendOne(t, name, v)
		}
	})
}

func mendOne(t *testing.T, name, value string) {
	field := []byte(name + ": " + value + "\r\n")
	got, ok := MendLongField(field)
	if !ok {
		return
	}
	if _, foldable := foldRaw(got); !foldable {
		t.Fatalf("MendLongField(%q) = %q, still not foldable", field, got)
	}
	if string(got) == string(field) || structured(canonical(name)) {
		return
	}
	gotName, gotValue, _ := strings.Cut(strings.ReplaceAll(string(got), "\r\n", ""), ":")
	if gotName != name {
		t.Fatalf("field name %q became %q", name, gotName)
	}
	dec := &mime.WordDecoder{CharsetReader: charsetReader}
	want, err1 := dec.DecodeHeader(strings.TrimSpace(value))
	read, err2 := dec.DecodeHeader(strings.TrimSpace(gotValue))
	if err1 == nil && (err2 != nil || collapse(read) != collapse(want)) {
		t.Fatalf("%s reads %q (%v), want %q", name, read, err2, want)
	}
}

// collapse is s with runs of white space as one space: folding and
// encoding may move white space between words, not the words.
func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }
