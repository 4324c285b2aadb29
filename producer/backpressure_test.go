package producer_test

import (
	"errors"
	"strings"
	"testing"

	"relay365/internal/body"
	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

// TestFullBodyStoreIsErrQueueFull: a large message whose body the body
// store has no room for (its stream's limits, or the disk it shares with
// MAIL) meets a full queue, and the package says so as for a full MAIL:
// ErrQueueFull, "retry later". A caller that follows the documented
// errors otherwise took it for an unknown failure (relay publish, exit
// 1) and gave the message up. Publish, PublishRaw and PublishBatch alike.
func TestFullBodyStoreIsErrQueueFull(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	s, err := env.JS.Stream(ctx, body.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = 128 << 10 // less than one large message
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	_, err = p.Publish(ctx, largeAlert("full-1"))
	if !errors.Is(err, producer.ErrQueueFull) {
		t.Fatalf("Publish of a large message into a full body store: %v, want ErrQueueFull", err)
	}
	raw := "From: <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nSubject: big\r\n\r\n" + strings.Repeat(strings.Repeat("z", 76)+"\r\n", 5000)
	if _, err := p.PublishRaw(ctx, "alerts", "full-2", []string{"ops@contoso.com"}, strings.NewReader(raw)); !errors.Is(err, producer.ErrQueueFull) {
		t.Fatalf("PublishRaw of a large message into a full body store: %v, want ErrQueueFull", err)
	}
	if _, err := p.PublishBatch(ctx, []*producer.Message{alert("full-3"), largeAlert("full-4")}); !errors.Is(err, producer.ErrQueueFull) {
		t.Fatalf("PublishBatch with a large message into a full body store: %v, want ErrQueueFull", err)
	}
	if n := queued(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d queued, want none", n)
	}
	cfg.MaxBytes = -1
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, largeAlert("full-1")); err != nil {
		t.Fatalf("Publish once there is room: %v", err)
	}
}
