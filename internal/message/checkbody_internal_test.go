package message

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// octetChecker is the octet-at-a-time scan bodyChecker.check replaced:
// the reference FuzzCheckBody holds it to.
type octetChecker struct {
	line, lineNo int
	n            int64
	cr           bool
}

func (c *octetChecker) check(p []byte) (int, error) {
	for i, b := range p {
		off := c.n + int64(i)
		switch {
		case b == 0:
			return i, invalid("body", "a NUL byte at offset %d", off)
		case c.cr && b != '\n':
			return i, invalid("body", "a bare CR at offset %d", off-1)
		case b == '\n' && !c.cr:
			return i, invalid("body", "a bare LF at offset %d", off)
		case b == '\n':
			c.lineNo++
			c.line = 0
		case b != '\r':
			c.line++
			if c.line > lineHard {
				return i, invalid("body", "line %d of the body is longer than 998 octets (RFC 5322 §2.1.1)", c.lineNo+1)
			}
		}
		c.cr = b == '\r'
	}
	c.n += int64(len(p))
	return len(p), nil
}

// pieces reads r at most max(1, cut) octets at a time.
type pieces struct {
	r   io.Reader
	cut int
}

func (p pieces) Read(b []byte) (int, error) { return p.r.Read(b[:min(len(b), max(1, p.cut))]) }

// readAll reads CheckBody(content) in reads of cut octets: what was
// passed before the error, and the error.
func readAll(content []byte, cut int) (int, string) {
	r := CheckBody(pieces{bytes.NewReader(content), cut})
	buf := make([]byte, 4096)
	total := 0
	for {
		n, err := r.Read(buf)
		total += n
		if err == io.EOF {
			return total, ""
		}
		if err != nil {
			return total, err.Error()
		}
	}
}

func TestCheckBody(t *testing.T) {
	long := strings.Repeat("x", 998)
	for _, tc := range []struct {
		name, content, err string
		passed             int
	}{
		{"lines", "a\r\nb\r\n", "", 6},
		{"no final CRLF", "a\r\nb", "", 4},
		{"998 octets", long + "\r\n", "", 1000},
		{"999 octets", long + "x\r\n", "line 1 of the body is longer than 998 octets", 998},
		{"NUL", "a\r\nb\x00", "a NUL byte at offset 4", 4},
		{"bare LF", "a\r\nb\nc", "a bare LF at offset 4", 4},
		{"bare CR", "a\rb", "a bare CR at offset 1", 2},
		{"CR CR LF", "a\r\r\n", "a bare CR at offset 1", 2},
		{"CR NUL", "a\r\x00", "a NUL byte at offset 2", 2},
		{"final bare CR", "a\r\nb\r", "ends with a bare CR", 5},
		{"NUL where the line gets too long", long + "\x00", "a NUL byte at offset 998", 998},
		{"long line on the second line", "a\r\n" + long + "xy", "line 2 of the body", 1001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cut := range []int{1, 3, 4096} {
				passed, err := readAll([]byte(tc.content), cut)
				if passed != tc.passed || (tc.err == "") != (err == "") || !strings.Contains(err, tc.err) {
					t.Fatalf("reads of %d: passed %d, error %q; want %d, %q", cut, passed, err, tc.passed, tc.err)
				}
			}
		})
	}
}

// FuzzCheckBody holds CheckBody, for content read in pieces of any size,
// to the octet-at-a-time reference: the same octets passed, the same
// error at the same offset.
func FuzzCheckBody(f *testing.F) {
	f.Add([]byte("a\r\nb\r\n.\r\n"), uint16(2), uint16(1))
	f.Add([]byte("a\rb\nc\x00"), uint16(1), uint16(0))
	f.Add(append(bytes.Repeat([]byte("y"), 997), "\r\nzz\x00"...), uint16(5), uint16(997))
	f.Fuzz(func(t *testing.T, content []byte, cut uint16, pad uint16) {
		// pad lengthens the first line, so long lines are reached.
		content = append(bytes.Repeat([]byte("p"), int(pad)%1100), content...)
		passed, err := readAll(content, int(cut)%2000)

		ref := &octetChecker{}
		want, werr := ref.check(content)
		wantErr := ""
		switch {
		case werr != nil:
			wantErr = werr.Error()
		case ref.cr:
			wantErr = invalid("body", "ends with a bare CR").Error()
		}
		if wantErr == "" {
			want = len(content)
		}
		if passed != want || err != wantErr {
			t.Fatalf("read in pieces of %d: passed %d, error %q; the octet scan: %d, %q", cut, passed, err, want, wantErr)
		}
	})
}

// BenchmarkCheckBody checks 1 MiB of base64 lines read 32 KiB at a time.
func BenchmarkCheckBody(b *testing.B) {
	content := bytes.Repeat([]byte(strings.Repeat("QUJD", 19)+"\r\n"), (1<<20)/78)
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(content)))
	for b.Loop() {
		r := CheckBody(bytes.NewReader(content))
		for {
			if _, err := r.Read(buf); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}
