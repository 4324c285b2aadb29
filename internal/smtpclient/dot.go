package smtpclient

import (
	"bufio"
	"bytes"
)

// dotWriter writes a message's content as DATA carries it: every line
// that begins with "." gets one more (RFC 5321 §4.5.2), a LF without its
// CR becomes CRLF (§2.3.8), and Close ends the content with CRLF "."
// CRLF (§4.1.1.4), adding a CRLF first when the content did not end with
// one (or it was empty). It writes what net/textproto's DotWriter wrote
// before it, octet for octet (FuzzDotWriter compares the two), but for a
// CRLF that follows a bare CR, which textproto makes CR CR LF; and it
// writes a line at a time where textproto writes an octet at a time,
// which for a 30 MB body was more than a quarter of relay serve's CPU
// (BENCHMARKS.md, "Large messages").
//
// A write error leaves the content unfinished: the caller must not Close
// (no final "." may leave) but end the connection.
type dotWriter struct {
	w     *bufio.Writer
	mid   bool // inside a line: the last octet written was not LF
	cr    bool // the last octet written was CR
	empty bool // nothing written yet
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, empty: true} }

func (d *dotWriter) Write(p []byte) (int, error) {
	d.empty = d.empty && len(p) == 0
	for i := 0; i < len(p); {
		if !d.mid && p[i] == '.' {
			d.w.WriteByte('.') // §4.5.2: the line's first period doubled
		}
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			d.w.Write(p[i:])
			d.mid, d.cr = true, p[len(p)-1] == '\r'
			break
		}
		j += i
		if j > i {
			d.w.Write(p[i:j])
			d.cr = p[j-1] == '\r'
		}
		if !d.cr {
			d.w.WriteByte('\r') // a bare LF ends the line as CRLF
		}
		d.w.WriteByte('\n')
		d.mid, d.cr = false, false
		i = j + 1
	}
	// bufio.Writer keeps its first error and returns it from every later
	// write and from Flush.
	if _, err := d.w.Write(nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the content and flushes. Empty content is sent as one
// empty line, as textproto does.
func (d *dotWriter) Close() error {
	if d.mid || d.empty {
		if !d.cr {
			d.w.WriteByte('\r')
		}
		d.w.WriteByte('\n')
	}
	d.w.WriteString(".\r\n")
	return d.w.Flush()
}
