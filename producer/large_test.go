package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

func largeAlert(id string) *producer.Message {
	m := alert(id)
	m.Attachments = []producer.Attachment{{Filename: "heap.pprof", Data: make([]byte, 300<<10)}}
	return m
}

// A large message's body is stored before its message is queued. When
// the queueing fails (MAIL full here; a timeout or a cancelled context
// alike) or is a duplicate of an earlier publish, the body left behind
// is named by nothing, and relay serve's sweeper deletes it once it is
// older than body.OrphanAge; the body a queued message names is kept.
func TestLargeBodyNotQueuedIsSwept(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	bodies := func() int {
		t.Helper()
		names, err := store.Names(ctx, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return len(names)
	}
	if _, err := p.Publish(ctx, largeAlert("heap-1")); err != nil {
		t.Fatal(err)
	}
	res, err := p.Publish(ctx, largeAlert("heap-1"))
	if err != nil || !res.Duplicate {
		t.Fatalf("the same id again: %+v %v, want a duplicate", res, err)
	}
	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	if _, err := p.Publish(ctx, largeAlert("heap-2")); !errors.Is(err, producer.ErrQueueFull) {
		t.Fatalf("into a full MAIL: %v, want ErrQueueFull", err)
	}
	if n := queued(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
	if n := bodies(); n != 3 {
		t.Fatalf("%d bodies stored, want 3: one queued, one a duplicate's, one refused", n)
	}
	// Younger than the orphan age: the sweeper leaves them (a producer
	// may still be retrying).
	if n, err := store.Sweep(ctx, env.JS, time.Now().Add(-body.OrphanAge)); err != nil || n != 0 {
		t.Fatalf("sweep of young bodies: %d %v, want 0", n, err)
	}
	if n, err := store.Sweep(ctx, env.JS, time.Now().Add(time.Minute)); err != nil || n != 2 {
		t.Fatalf("sweep once they are old: %d %v, want the 2 nothing names", n, err)
	}
	if n := bodies(); n != 1 {
		t.Fatalf("%d bodies left, want the queued message's", n)
	}
}

// Without the MAIL stream, Publish retries (as it does while a cluster
// elects a leader) until its context ends, then says what is missing: it
// does not fail by itself, so ctx needs a deadline. A large message,
// whose body bucket is missing as well, waits the same way.
func TestPublishWithoutMailStreamWaitsForTheDeadline(t *testing.T) {
	env := queuetest.Start(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*producer.Message{alert("nostream-1"), largeAlert("nostream-2")} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = p.Publish(ctx, m)
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() == nil {
			t.Fatalf("%s: %v: want context.DeadlineExceeded once ctx ended", m.ID, err)
		}
		cancel()
		if want := "MAIL stream"; m.Attachments == nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name the %s", err, want)
		}
		if want := body.Bucket; m.Attachments != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name the bucket %s", err, want)
		}
	}
}
