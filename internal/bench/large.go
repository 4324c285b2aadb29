package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
)

// Large messages (--size above message.InlineMax): the relay run stores
// each body in the body store as a producer does and publishes the
// reference; the ceiling client streams the same content. Both generate
// the content as they send it (largeContent). There is no latency run.

// large reports whether the bench's messages go through the body store.
func (c Config) large() bool { return large(c.Size) }

// large reports whether messages of size go through the body store.
func large(size int) bool { return size > message.InlineMax }

// largeContent is a raw message of about size octets: a header section
// and 7-bit filler lines, made as it is read.
func largeContent(from, subject string, size int) io.Reader {
	head := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", from, recipient, subject)
	return io.MultiReader(bytes.NewReader([]byte(head)), &fillerReader{left: max(size-len(head), 2)})
}

// fillerReader yields n octets of CRLF lines of 72 characters.
type fillerReader struct {
	left int
	pos  int
}

const fillerLine = "The quick brown fox jumps over the lazy dog; pack my box with jugs. 0123\r\n"

func (f *fillerReader) Read(p []byte) (int, error) {
	if f.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && f.left > 0 {
		c := copy(p[n:min(len(p), n+f.left)], fillerLine[f.pos:])
		n += c
		f.left -= c
		f.pos = (f.pos + c) % len(fillerLine)
	}
	if f.left == 0 && f.pos != 0 {
		// End on a whole line: the last octets become CRLF.
		p[n-2], p[n-1] = '\r', '\n'
	}
	return n, nil
}

// largePayload returns the relay run's messages for large sizes: each
// body stored as the producer package stores it (body.OpenStoreOnly: the
// bench connects as the producer, whose role may not ask for the body
// stream's info), then a message naming it.
func (e *env) largePayload(ctx context.Context, acct account.Account) (func(id, subject string) ([]byte, error), error) {
	store := body.OpenStoreOnly(e.js)
	return func(id, subject string) ([]byte, error) {
		env := &message.Message{ID: id, Account: acct.Alias, To: []string{recipient}}
		return store.StoreMessage(ctx, env, largeContent(acct.Mailbox, subject, e.cfg.Size), message.MaxSize)
	}, nil
}
