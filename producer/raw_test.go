package producer_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"relay365/internal/message"
	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

// A raw message the worker can never render (a line before the header
// section ends that is no header field, two From fields, a body line
// longer than SMTP carries) is refused by Publish, PublishRaw and
// PublishBatch with the *Invalid the worker would have dead-lettered it
// with, small or large enough for the body store, and nothing is
// queued: the caller learns it at once, not from a dead letter.
func TestPublishRefusesRawTheWorkerWouldDeadLetter(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat(strings.Repeat("z", 70)+"\r\n", 5000) // past message.InlineMax: the body store
	bad := map[string]string{
		"not a header":   "this is not a header\r\n\r\nbody\r\n",
		"two From":       "From: a@contoso.com\r\nFrom: b@contoso.com\r\nSubject: x\r\n\r\nbody\r\n",
		"From not one":   "From: a@contoso.com, b@contoso.com\r\nSubject: x\r\n\r\nbody\r\n",
		"long body line": "Subject: x\r\n\r\n" + strings.Repeat("y", 2000) + "\r\n",
	}
	for name, raw := range bad {
		for _, size := range []string{"small", "large"} {
			if size == "large" {
				raw += pad
			}
			m := &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Raw: []byte(raw)}
			// What the worker does with it, whatever the account.
			_, werr := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com"}, time.Now())
			if !message.IsInvalid(werr) {
				t.Fatalf("%s: the worker renders it (%v): not a case for this test", name, werr)
			}
			var inv *producer.Invalid
			if _, err := p.Publish(ctx, m); !errors.As(err, &inv) {
				t.Errorf("Publish, %s, %s: %v, want a *producer.Invalid (the worker: %v)", name, size, err, werr)
			}
			if _, err := p.PublishRaw(ctx, "alerts", "", []string{"ops@contoso.com"}, bytes.NewReader([]byte(raw))); !errors.As(err, &inv) {
				t.Errorf("PublishRaw, %s, %s: %v, want a *producer.Invalid", name, size, err)
			}
			ok := &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Raw: []byte("Subject: fine\r\n\r\nbody\r\n")}
			if _, err := p.PublishBatch(ctx, []*producer.Message{ok, m}); !errors.As(err, &inv) {
				t.Errorf("PublishBatch, %s, %s: %v, want a *producer.Invalid", name, size, err)
			}
		}
	}
	if n := queued(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d messages queued, want none: each would only be dead-lettered", n)
	}
}
