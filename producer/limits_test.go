package producer_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/limits"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
	"relay365/producer"
)

func queued(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	return queuetest.Msgs(t, ctx, js, queue.StreamMail)
}

// An account whose limit is 64 KiB: a message over it, inline or large
// enough for the body store, is refused with its size, the limit and the
// account, and nothing is queued or stored; one under it is queued.
// Another account keeps 35 MB.
func TestPublishHoldsToTheAccountLimit(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	const limit = 64 << 10
	p := withAccounts(t, ctx, env,
		account.Account{Alias: "small", Mailbox: "small@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", MaxMessageBytes: limit},
		account.Account{Alias: "plain", Mailbox: "plain@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"})
	if got := p.Limit(ctx, "small"); got != limit {
		t.Fatalf("Limit(small) = %d, want %d", got, limit)
	}
	if got := p.Limit(ctx, "plain"); got != message.MaxSize {
		t.Fatalf("Limit(plain) = %d, want 35 MB", got)
	}

	inline := &producer.Message{Account: "small", To: []string{"ops@contoso.com"}, Subject: "inline", Text: strings.Repeat("x", 100<<10)}
	large := &producer.Message{Account: "small", To: []string{"ops@contoso.com"}, Subject: "large", Text: "see attachment",
		Attachments: []producer.Attachment{{Filename: "a.bin", Data: make([]byte, 300<<10)}}}
	for _, m := range []*producer.Message{inline, large} {
		want, err := message.CountedSize(m)
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Publish(ctx, m)
		var tl *producer.TooLarge
		if !errors.As(err, &tl) || tl.Size != want || tl.Limit != limit || tl.Account != "small" {
			t.Fatalf("%s: %v, want a TooLarge of %d bytes over account small's %d", m.Subject, err, want, limit)
		}
		for _, w := range []string{"message of " + itoa(want) + " bytes", "size limit of 65536 bytes", "account small"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", m.Subject, err, w)
			}
		}
	}
	if n := queued(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d messages queued after the refusals, want 0", n)
	}
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if names, err := store.Names(ctx, time.Now().Add(time.Hour)); err != nil || len(names) != 0 {
		t.Fatalf("bodies stored after the refusals: %v %v", names, err)
	}
	// Under the limit: queued. The 35 MB account takes what small refused.
	if _, err := p.Publish(ctx, &producer.Message{Account: "small", To: []string{"ops@contoso.com"}, Subject: "fits", Text: "short"}); err != nil {
		t.Fatal(err)
	}
	large.Account, large.ID = "plain", ""
	if _, err := p.Publish(ctx, large); err != nil {
		t.Fatalf("the same message for a 35 MB account: %v", err)
	}
	if n := queued(t, ctx, env.JS); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}

// With no relay serve to ask (the queue is durable: producers publish
// while it is down), the producer assumes 35 MB, says so at debug level,
// and publishes.
func TestPublishWithoutRelayServe(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.Buffer
	p.Log = zerolog.New(&logs).Level(zerolog.DebugLevel)
	big := make([]byte, 300<<10)
	if _, err := p.Publish(ctx, &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "while down", Text: "x",
		Attachments: []producer.Attachment{{Filename: "a.bin", Data: big}}}); err != nil {
		t.Fatalf("publish with relay serve down: %v", err)
	}
	if n := queued(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
	if got := p.Limit(ctx, "alerts"); got != message.MaxSize {
		t.Errorf("Limit = %d, want 35 MB", got)
	}
	out := logs.String()
	if !strings.Contains(out, `"level":"debug"`) || !strings.Contains(out, "assuming 35 MB") || !strings.Contains(out, `"account":"alerts"`) {
		t.Errorf("debug log %q: want the 35 MB assumption for alerts", out)
	}
	if strings.Contains(out, `"level":"error"`) || strings.Contains(out, `"level":"warn"`) {
		t.Errorf("log %q: the fallback is not an error", out)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A publish whose context was already cancelled (a monitoring tool
// shutting down, a per-alert deadline spent) fails; it must not leave
// the 35 MB fallback cached in place of the account's own limit, or the
// next publish, with a live context, queues a message over that limit
// instead of refusing it.
func TestCancelledPublishKeepsTheAccountLimit(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	const limit = 64 << 10
	p := withAccounts(t, ctx, env, account.Account{Alias: "small", Mailbox: "small@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", MaxMessageBytes: limit})
	over := func() *producer.Message {
		return &producer.Message{Account: "small", To: []string{"ops@contoso.com"}, Subject: "over", Text: strings.Repeat("x", 100<<10)}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.Publish(cctx, over()); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a cancelled context: %v, want context.Canceled", err)
	}
	_, err := p.Publish(ctx, over())
	var tl *producer.TooLarge
	if !errors.As(err, &tl) || tl.Limit != limit {
		t.Fatalf("the next publish: %v, want a TooLarge over the account's %d", err, limit)
	}
	if got := p.Limit(ctx, "small"); got != limit {
		t.Errorf("Limit(small) = %d, want %d", got, limit)
	}
	if n := queued(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d queued, want 0", n)
	}
}

// withAccounts configures accounts in relay_accounts, starts the limits
// service that answers for them (stopped with the test) and returns a
// Producer on env's connection.
func withAccounts(t *testing.T, ctx context.Context, env *queuetest.Env, accounts ...account.Account) *producer.Producer {
	t.Helper()
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accounts {
		if err := reg.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := limits.Start(env.NC, reg, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
