package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Large messages (--size above message.InlineMax): the relay run stores
// each body in the body store as a producer does and publishes the
// reference; the ceiling client streams the same content. Both generate
// the content as they send it (largeContent), so the process's peak RSS
// is the relay's (and its embedded server's) working memory, not copies
// of 30 MB messages held by the bench. There is no latency run.

// large reports whether the bench's messages go through the body store.
func (c Config) large() bool { return c.Size > message.InlineMax }

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

// largeRing is the ceiling's messages for --size above the inline limit.
func (e *env) largeRing(acct account.Account) []content {
	return []content{{from: acct.Mailbox, rcpts: []string{recipient}, open: func() io.Reader {
		return largeContent(acct.Mailbox, "ceiling large", e.cfg.Size)
	}}}
}

// largeRelayRun stores and publishes Messages large messages as the
// producer package does (body first, then the reference) and waits for
// the sink to accept them all.
func (e *env) largeRelayRun(ctx context.Context, acct account.Account) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	store, err := body.Open(ctx, e.js)
	if err != nil {
		return 0, err
	}
	base := e.fake.Accepted()
	start := time.Now()
	for i := range e.cfg.Messages {
		id := fmt.Sprintf("relay-%s-%d", acct.Alias, i)
		ref, err := store.Put(ctx, largeContent(acct.Mailbox, fmt.Sprintf("relay %d", i), e.cfg.Size), message.MaxSize)
		if err != nil {
			return 0, err
		}
		data, err := (&message.Message{ID: id, Account: acct.Alias, To: []string{recipient}, Body: &ref}).Encode()
		if err != nil {
			return 0, err
		}
		if _, err := e.js.PublishAsync(queue.Subject(acct.Alias), data, jetstream.WithMsgID(id), jetstream.WithStallWait(e.cfg.Timeout)); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, fmt.Errorf("publishing: %w", ctx.Err())
	}
	if _, err := e.fake.WaitMessages(ctx, base+e.cfg.Messages); err != nil {
		return 0, fmt.Errorf("%d of %d relayed: %w", e.fake.Accepted()-base, e.cfg.Messages, err)
	}
	return time.Since(start), nil
}
