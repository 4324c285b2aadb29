package limits_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/limits"
	"relay365/internal/queue/queuetest"
)

// start runs the service over a registry holding "small" (10 KiB) and
// "plain" (no limit stated).
func start(t *testing.T) (*queuetest.Env, context.Context, *limits.Service) {
	t.Helper()
	env, ctx := queuetest.StartMail(t)
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []account.Account{
		{Alias: "small", Mailbox: "small@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", MaxMessageBytes: 10 << 10},
		{Alias: "plain", Mailbox: "plain@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"},
	} {
		if err := reg.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := limits.Start(env.NC, reg, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return env, ctx, svc
}

// The service answers an account's limit and nothing else; an unknown
// alias is an UnknownAccount; once it stops, nobody answers.
func TestLookup(t *testing.T) {
	env, ctx, svc := start(t)
	if n, err := limits.Lookup(ctx, env.NC, "small"); err != nil || n != 10<<10 {
		t.Fatalf("small: %d, %v; want 10240", n, err)
	}
	if n, err := limits.Lookup(ctx, env.NC, "plain"); err != nil || n != limits.Default {
		t.Fatalf("plain: %d, %v; want the 35 MB default", n, err)
	}
	msg, err := env.NC.RequestWithContext(ctx, limits.Subject("small"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msg.Data); got != `{"account":"small","max_message_bytes":10240}` {
		t.Errorf("answer %s: want the alias and the limit only", got)
	}
	var unknown *limits.UnknownAccount
	if _, err := limits.Lookup(ctx, env.NC, "nobody"); !errors.As(err, &unknown) || unknown.Account != "nobody" {
		t.Fatalf("nobody: %v, want an UnknownAccount", err)
	}
	svc.Close()
	if _, err := limits.Lookup(ctx, env.NC, "small"); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after Close: %v, want no responders", err)
	}
}

// A request whose reply subject is not an inbox is not answered: the
// relay's connection would otherwise publish the answer wherever the
// requester pointed it (a JetStream API subject, a dead-letter subject).
func TestAnswersOnlyInboxes(t *testing.T) {
	env, ctx, _ := start(t)
	target, err := env.NC.SubscribeSync("mail.dlq.small")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.NC.PublishRequest(limits.Subject("small"), "mail.dlq.small", nil); err != nil {
		t.Fatal(err)
	}
	// The service takes requests in order: once a later one is
	// answered, the first was handled.
	if _, err := limits.Lookup(ctx, env.NC, "small"); err != nil {
		t.Fatal(err)
	}
	if m, err := target.NextMsg(10 * time.Millisecond); err == nil {
		t.Fatalf("answered to mail.dlq.small: %s", m.Data)
	}
	for s, want := range map[string]bool{
		"_INBOX.abc.1": true, "_INBOX_producer.abc.1": true, "_INBOX.": false, "_INBOX_relay_workers.x": false,
		"$JS.API.STREAM.DELETE.MAIL": false, "mail.dlq.small": false, "": false,
	} {
		if limits.ReplyAllowed(s) != want {
			t.Errorf("ReplyAllowed(%q) = %v, want %v", s, !want, want)
		}
	}
}
