package producer_test

import (
	"context"
	"errors"
	"runtime"
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
// round.)
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
	round()
	before := runtime.NumGoroutine()
	for range 5 {
		round()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the publishes:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
}
