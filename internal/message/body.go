package message

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"
)

// Large messages (docs/design.md §3.5). A message whose JSON would be
// larger than InlineMax travels in two parts: its content, as a raw RFC
// 5322 message with CRLF line endings, in the body store (an Object Store
// bucket, internal/body), and on the MAIL subject a small JSON document
// with the envelope and a BodyRef in place of raw. The worker reads the
// header section to apply the raw rules of raw.go (From policy, Bcc,
// Date, Message-ID) and streams the rest into DATA, checking each line as
// it goes (CheckBody), so a 35 MB message costs it a buffer, not 35 MB.

// InlineMax is the largest encoded JSON message published as it is; a
// larger one's content goes to the body store. 256 KiB stays well below
// NATS's default 1 MiB payload limit, and keeps the messages a lane holds
// ahead (LookaheadBytes) many.
const InlineMax = 256 << 10

// EncodeInline returns m's JSON when it fits in InlineMax; inline is
// false when m's content must go to the body store instead. The JSON of a
// message whose content alone passes InlineMax (raw and attachments
// base64 in JSON, four octets for three; text and HTML at least as long)
// is not made at all.
func EncodeInline(m *Message) (data []byte, inline bool, err error) {
	if m.Body != nil {
		data, err = m.Encode() // a reference is small
		return data, true, err
	}
	n := len(m.Raw)
	for _, a := range m.Attachments {
		n += len(a.Data)
	}
	if n/3*4+len(m.Text)+len(m.HTML) > InlineMax {
		return nil, false, nil
	}
	if data, err = m.Encode(); err != nil {
		return nil, false, err
	}
	return data, len(data) <= InlineMax, nil
}

// BodyRef names a message's content in the body store: the object, its
// exact size and its SHA-256 digest as the store reports it
// ("SHA-256=<base64url>"), checked when it is read, so a body that was
// replaced or cut is never sent as this message.
type BodyRef struct {
	Object   string `json:"object"`
	Size     int64  `json:"size"`
	Digest   string `json:"digest"`
	EightBit bool   `json:"eight_bit,omitempty"` // an octet above 127: BODY=8BITMIME
}

// objectRE: body objects are named by the relay ("b-" and 32 hex digits);
// anything else was not stored by a Relay365 producer.
var objectRE = regexp.MustCompile(`^b-[0-9a-f]{32}$`)

// ValidBodyObject reports whether name is a body object name the relay
// could have stored (body.NewName): what a reference read from a stored
// message, not validated, must be before it is printed or deleted.
func ValidBodyObject(name string) bool { return objectRE.MatchString(name) }

func (b *BodyRef) validate() error {
	if !objectRE.MatchString(b.Object) {
		return invalid("body.object", "%q is not a body object name", b.Object)
	}
	if b.Size <= 0 {
		return invalid("body.size", "%d is not a size", b.Size)
	}
	if b.Size > MaxSize {
		return tooBig("body.size", "", b.Size)
	}
	if len(b.Digest) < 10 || len(b.Digest) > 100 {
		return invalid("body.digest", "%q is not a digest", b.Digest)
	}
	return nil
}

// MaxHeaderSection bounds the header section of a stored body, read into
// memory by the worker (the rest streams).
const MaxHeaderSection = 1 << 20

// ReadHeaderSection reads r up to and including the empty line that ends
// the header section (RFC 5322 §2.1), and returns it. A body without one
// (all header) or whose header section is larger than MaxHeaderSection is
// invalid.
func ReadHeaderSection(r io.Reader) ([]byte, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if len(head) > MaxHeaderSection {
			return nil, invalid("body", "header section longer than %d bytes", MaxHeaderSection)
		}
		if bytes.Equal(line, []byte("\r\n")) {
			return head, nil
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			return nil, invalid("body", "no empty line ends the header section")
		case err != nil:
			return nil, err
		}
	}
}

// RenderBody renders a message whose content is in the body store: head
// is the stored header section (ReadHeaderSection). The Rendered's Data is
// the header section to send, Body the rest of the object from BodyOffset,
// and Size the whole.
func RenderBody(m *Message, s Sender, now time.Time, head []byte) (*Rendered, error) {
	if m.Body == nil {
		return nil, errors.New("message has no body reference")
	}
	rcpts, err := m.Recipients()
	if err != nil {
		return nil, err
	}
	hm := *m
	hm.Raw, hm.Body = head, nil
	data, err := renderRaw(&hm, s, now)
	if err != nil {
		return nil, err
	}
	r := &Rendered{MailFrom: s.Mailbox, Rcpts: rcpts, Data: data, Body: m.Body, BodyOffset: int64(len(head))}
	if size := r.Size(); size > MaxSize {
		return nil, tooBig("body", "", size)
	}
	return r, nil
}

// Size is the rendered message's size in octets.
func (r *Rendered) Size() int64 {
	if r.Body == nil {
		return int64(len(r.Data))
	}
	return int64(len(r.Data)) + r.Body.Size - r.BodyOffset
}

// CheckBody passes r through, failing with an *Invalid on what SMTP
// cannot carry as it is: a NUL (RFC 5322 §3.5), a CR or LF not in a CRLF
// pair (RFC 5321 §2.3.8), a line longer than 998 octets (RFC 5322
// §2.1.1). Producers store bodies already checked; this is the worker's
// guard against one stored by other means, and it fails before the
// content's end is sent, so nothing is delivered.
func CheckBody(r io.Reader) io.Reader { return &bodyChecker{r: r} }

type bodyChecker struct {
	r      io.Reader
	line   int   // octets in the current line so far
	n      int64 // octets read
	lineNo int
	cr     bool // the last octet was CR
}

func (c *bodyChecker) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if i, bad := c.check(p[:n]); bad != nil {
		return i, bad
	}
	c.n += int64(n)
	if err == io.EOF && c.cr {
		return n, invalid("body", "ends with a bare CR")
	}
	return n, err
}

// check checks b, which follows the c.n octets already checked, a line at
// a time (a body is read at hundreds of MB/s; an octet at a time was 6 %
// of relay serve's CPU sending 30 MB messages). It returns the offset in
// b of the first octet in error with the error, as an octet-by-octet
// scan finds it (FuzzCheckBody compares the two).
func (c *bodyChecker) check(b []byte) (int, error) {
	for i := 0; i < len(b); {
		if c.cr { // the octet after a CR must be its LF
			if b[i] == 0 {
				return i, invalid("body", "a NUL byte at offset %d", c.n+int64(i))
			}
			if b[i] != '\n' {
				return i, invalid("body", "a bare CR at offset %d", c.n+int64(i)-1)
			}
			c.cr = false
			c.lineNo++
			c.line = 0
			i++
			continue
		}
		// The line's text: up to its CR, or the end of b.
		end := len(b)
		if j := bytes.IndexByte(b[i:], '\r'); j >= 0 {
			end = i + j
		}
		text := b[i:end]
		bad := len(text) // the first NUL or LF in text, if any
		if j := bytes.IndexByte(text, 0); j >= 0 {
			bad = j
		}
		if j := bytes.IndexByte(text[:bad], '\n'); j >= 0 {
			bad = j
		}
		// The octet that takes the line past 998 counts only if it
		// comes before the NUL or LF.
		if long := lineHard - c.line; long < bad {
			return i + long, invalid("body", "line %d of the body is longer than 998 octets (RFC 5322 §2.1.1)", c.lineNo+1)
		}
		if bad < len(text) {
			off := c.n + int64(i+bad)
			if text[bad] == 0 {
				return i + bad, invalid("body", "a NUL byte at offset %d", off)
			}
			return i + bad, invalid("body", "a bare LF at offset %d", off)
		}
		c.line += len(text)
		i = end
		if i < len(b) {
			c.cr = true // b[i] is the CR
			i++
		}
	}
	return len(b), nil
}

// CRLFWriter writes to w what is written to it with every line ending
// made CRLF (a bare LF or CR becomes CRLF, as NormalizeRaw does), failing
// on a NUL or on a body line longer than 998 octets, and noting whether
// any octet is above 127: what a producer stores as a body.
// Close flushes a trailing bare CR.
type CRLFWriter struct {
	w        io.Writer
	n        int64 // octets written to w
	EightBit bool
	line     int
	lineNo   int
	cr       bool
	body     bool // past the header section
	buf      []byte
}

// NewCRLFWriter returns a CRLFWriter writing to w.
func NewCRLFWriter(w io.Writer) *CRLFWriter { return &CRLFWriter{w: w} }

// crlfChunk bounds the writer's buffer: a large Write (io.Copy from a
// bytes.Reader hands over the whole message at once) is taken a piece at
// a time, so normalising costs a small buffer, not a second copy.
const crlfChunk = 64 << 10

func (c *CRLFWriter) Write(p []byte) (int, error) {
	for done := 0; done < len(p); {
		piece := p[done:min(len(p), done+crlfChunk)]
		if err := c.write(piece); err != nil {
			return done, err
		}
		done += len(piece)
	}
	return len(p), nil
}

func (c *CRLFWriter) write(p []byte) error {
	c.buf = c.buf[:0]
	for _, b := range p {
		switch {
		case b == 0:
			return invalid("raw", "contains a NUL byte at offset %d", c.n+int64(len(c.buf)))
		case b == '\n':
			if !c.cr {
				c.buf = append(c.buf, '\r')
			}
			c.buf = append(c.buf, '\n')
			c.endLine()
			c.cr = false
			continue
		case c.cr: // a bare CR ended the line
			c.buf = append(c.buf, '\n')
			c.endLine()
		}
		c.cr = b == '\r'
		c.buf = append(c.buf, b)
		if b != '\r' {
			c.line++
			if c.body && c.line > lineHard {
				return invalid("raw", "line %d is longer than 998 octets (RFC 5322 §2.1.1): encode long lines quoted-printable or base64", c.lineNo+1)
			}
			if b >= 0x80 {
				c.EightBit = true
			}
		}
	}
	n, err := c.w.Write(c.buf)
	c.n += int64(n)
	return err
}

// endLine: an empty line ends the header section, whose long lines the
// worker folds (raw.go); the body's it cannot.
func (c *CRLFWriter) endLine() {
	if c.line == 0 {
		c.body = true
	}
	c.line = 0
	c.lineNo++
}

// Close ends a final bare CR with LF.
func (c *CRLFWriter) Close() error {
	if !c.cr {
		return nil
	}
	c.cr = false
	n, err := c.w.Write([]byte("\n"))
	c.n += int64(n)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}
