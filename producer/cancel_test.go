package producer_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

// A Publish (small or large, alone or in a batch) waiting on a MAIL
// stream that is not there returns context.Canceled once its context is
// cancelled, and leaves no goroutine behind. (The first large publish
// starts the JetStream context's reply handler for asynchronous
// publishes, which lives as long as the Producer: counted after a first
// round that gives it time to start.) Only the goroutines of the code under test are counted
// (clientGoroutines): the embedded NATS server in the same process starts
// and ends its own as it pleases, and once made the count fail under load.
func TestCancelledPublishReturnsAndLeavesNoGoroutine(t *testing.T) {
	env := queuetest.Start(t) // no MAIL stream, no body bucket: every publish waits
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	publishes := []func(context.Context) error{
		func(ctx context.Context) error { _, err := p.Publish(ctx, alert("c-1")); return err },
		func(ctx context.Context) error { _, err := p.Publish(ctx, largeAlert("c-2")); return err },
		func(ctx context.Context) error {
			_, err := p.PublishBatch(ctx, []*producer.Message{alert("c-3"), alert("c-4")})
			return err
		},
	}
	round := func() {
		t.Helper()
		for _, publish := range publishes {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- publish(ctx) }()
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled publish: %v, want context.Canceled", err)
			}
		}
	}
	// The first round lets each publish run its course for a while before
	// its context ends, so that whatever lives as long as the connection
	// or the Producer (the asynchronous reply handler) has started before
	// the count, whatever the load: cancelled at once, a publish may end
	// before it gets that far, and the handler started in a later round
	// was counted as a leak.
	for _, publish := range publishes {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := publish(ctx); err == nil {
			t.Fatal("a publish without a MAIL stream succeeded")
		}
		cancel()
	}
	before := len(clientGoroutines())
	for range 5 {
		round()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := clientGoroutines()
		if len(left) <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the producer and the NATS client, %d before the publishes:\n%s",
				len(left), before, strings.Join(left, "\n\n"))
		}
		runtime.Gosched()
	}
}

// clientGoroutines returns the stacks of the goroutines that belong to
// the code under test: those with a frame of package producer or of the
// NATS client (nats.go, jetstream; "nats%2ego" in a stack), or started
// by one ("created by").
// The embedded server's (nats-server) are not counted: they come and go
// with its own work.
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var ours []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/nats-io/nats-server/") {
			continue
		}
		if strings.Contains(g, "relay365/producer.") || strings.Contains(g, "github.com/nats-io/nats%2ego") || strings.Contains(g, "github.com/nats-io/nats.go") {
			ours = append(ours, g)
		}
	}
	return ours
}
