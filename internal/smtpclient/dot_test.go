package smtpclient

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"testing"
)

// dotStuff writes the pieces through a dotWriter and closes it.
func dotStuff(t testing.TB, pieces ...string) string {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	d := newDotWriter(bw)
	for _, p := range pieces {
		if n, err := d.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pieces []string
		want   string
	}{
		{"empty", nil, "\r\n.\r\n"},
		{"one line", []string{"a\r\n"}, "a\r\n.\r\n"},
		{"no final CRLF", []string{"a"}, "a\r\n.\r\n"},
		{"final bare CR", []string{"a\r"}, "a\r\n.\r\n"},
		{"leading period", []string{".a\r\n"}, "..a\r\n.\r\n"},
		{"a line of one period", []string{"a\r\n.\r\nb\r\n"}, "a\r\n..\r\nb\r\n.\r\n"},
		{"period inside a line", []string{"a.b\r\n"}, "a.b\r\n.\r\n"},
		{"bare LF", []string{"a\nb\n"}, "a\r\nb\r\n.\r\n"},
		{"bare CR kept", []string{"a\rb\r\n"}, "a\rb\r\n.\r\n"},
		{"CRLF after a bare CR kept", []string{"a\r\r\n"}, "a\r\r\n.\r\n"},
		{"CR and LF in two writes", []string{"a\r", "\n.b\r\n"}, "a\r\n..b\r\n.\r\n"},
		{"period starts the next write", []string{"a\r\n", ".", "b\r\n"}, "a\r\n..b\r\n.\r\n"},
		{"period split from its line", []string{"a\r\n.", ".\r\n"}, "a\r\n...\r\n.\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dotStuff(t, tc.pieces...); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzDotWriter holds dotWriter, for content cut into writes at
// arbitrary places, to what net/textproto's DotWriter (which the client
// used before) writes, octet by octet, but for one difference: textproto
// takes the octet after a bare CR as data even when it is a CR, so in
// "\r\r\n" it adds a third; dotWriter sends that CRLF as it is.
func FuzzDotWriter(f *testing.F) {
	f.Add("a\r\n.\r\nb", uint8(1), uint8(3))
	f.Add(".\n.\r.\r\n..", uint8(0), uint8(2))
	f.Add("\r\n\r\n", uint8(2), uint8(1))
	f.Add("\r\r\n", uint8(1), uint8(3))
	f.Fuzz(func(t *testing.T, content string, cut1, cut2 uint8) {
		a, b := min(int(cut1), len(content)), min(int(cut2), len(content))
		a, b = min(a, b), max(a, b)
		got := dotStuff(t, content[:a], content[a:b], content[b:])

		if strings.Contains(content, "\r\r") {
			t.Skip("textproto differs here (above); TestDotWriter holds dotWriter's answer")
		}
		var want bytes.Buffer
		bw := bufio.NewWriter(&want)
		tw := textproto.NewWriter(bw).DotWriter()
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if got != want.String() {
			t.Fatalf("content %q cut at %d, %d: got %q, textproto writes %q", content, a, b, got, want.String())
		}
	})
}

// BenchmarkDotWriter stuffs 1 MiB of base64-like lines, a period leading
// every tenth.
func BenchmarkDotWriter(b *testing.B) {
	var content strings.Builder
	for i := 0; content.Len() < 1<<20; i++ {
		if i%10 == 0 {
			content.WriteString(".")
		}
		content.WriteString(strings.Repeat("QUJD", 19) + "\r\n")
	}
	data := []byte(content.String())
	bw := bufio.NewWriter(discard{})
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		d := newDotWriter(bw)
		for p := data; len(p) > 0; p = p[min(len(p), 32<<10):] {
			d.Write(p[:min(len(p), 32<<10)])
		}
		d.Close()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
