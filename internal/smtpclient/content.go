package smtpclient

import (
	"bytes"
	"fmt"
	"io"
)

// Content is what DATA carries: Size octets of a message with CRLF line
// endings (not yet dot-stuffed), read from Open once per transaction, so
// a message of 35 MB streams from where it is kept instead of sitting in
// memory, and a retry or the next recipient batch reads it afresh.
//
// EightBit says whether any octet is above 127 (BODY=8BITMIME, RFC 6152
// §3); Size is announced with SIZE (RFC 1870 §6) and must be exact.
type Content struct {
	Size     int64
	EightBit bool
	Open     func() (io.ReadCloser, error)
}

// Bytes is the Content of a message held in memory.
func Bytes(data []byte) Content {
	return Content{
		Size:     int64(len(data)),
		EightBit: EightBit(data),
		Open:     func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
	}
}

// EightBit reports whether data holds an octet above 127, which the
// content may carry only with BODY=8BITMIME (RFC 6152 §3).
func EightBit(data []byte) bool { return !isASCII(data) }

// ContentError is a failure to read the message's content while sending
// it: the server was never told the content ended (no final ".", RFC
// 5321 §4.1.1.4), so it discards the transaction (§3.8), and the
// connection is closed. Err is the reader's error: the caller decides
// what it means (a body that is gone, one whose digest no longer matches,
// a store that did not answer).
type ContentError struct{ Err error }

func (e *ContentError) Error() string { return fmt.Sprintf("reading the message content: %v", e.Err) }
func (e *ContentError) Unwrap() error { return e.Err }

// countingReader reports the reader's errors as *ContentError, and checks that the content is as long as announced: a
// shorter or longer one would make SIZE a lie, and one that differs from
// what was stored is not the message the producer handed over.
type countingReader struct {
	r    io.Reader
	n    int64
	want int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	switch {
	case c.n > c.want:
		return n, &ContentError{Err: fmt.Errorf("content longer than its %d octets", c.want)}
	case err == io.EOF && c.n != c.want:
		return n, &ContentError{Err: fmt.Errorf("content ended after %d of its %d octets", c.n, c.want)}
	case err != nil && err != io.EOF:
		return n, &ContentError{Err: err}
	}
	return n, err
}
