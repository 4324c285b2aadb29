package relay_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay"
)

// markRound marks n markers of round r from n goroutines at once and
// checks that each is found afterwards.
func markRound(t *testing.T, sm *relay.SentMarkers, r, n int) {
	t.Helper()
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- sm.Mark(ctx, "grp", fmt.Sprintf("m-%d-%d", r, i), 0, 1, 1, time.Now())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if sent, err := sm.Sent(ctx, "grp", fmt.Sprintf("m-%d-%d", r, i), 0); err != nil || !sent {
			t.Fatalf("marker m-%d-%d: sent %v, %v after Mark returned", r, i, sent, err)
		}
	}
}

// batchIDs counts the messages on the markers bucket's subjects that
// carried an atomic batch id.
func batchIDs(t *testing.T, nc *nats.Conn) func() int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	sub, err := nc.Subscribe("$KV."+relay.SentBucket+".>", func(m *nats.Msg) {
		if m.Header.Get("Nats-Batch-Id") != "" {
			mu.Lock()
			n++
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return func() int {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// TestMarkersShareWrites: markers written while another is in flight
// are committed together, as an atomic batch on the bucket's stream (one
// synced write), and every Mark returns only once its marker is stored.
func TestMarkersShareWrites(t *testing.T) {
	env := queuetest.Start(t)
	ctx := t.Context()
	if _, err := relay.OpenSentMarkers(ctx, env.JS); err != nil {
		t.Fatal(err)
	}
	if err := relay.AllowSentBatches(ctx, env.JS); err != nil {
		t.Fatal(err)
	}
	sm, err := relay.OpenSentMarkers(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	batched := batchIDs(t, env.NC)
	// 64 at once: while the first write is in flight the others queue.
	// Scheduling decides how many; a few rounds make a batch certain.
	for r := 0; r < 20 && batched() == 0; r++ {
		markRound(t, sm, r, 64)
	}
	if batched() == 0 {
		t.Fatal("64 concurrent markers, 20 rounds: none was written in an atomic batch")
	}
}

// TestMarkersWithoutBatches: on a bucket whose stream does not take
// atomic batches (made by an earlier version, relay setup not run), the
// markers are written one at a time and all are stored.
func TestMarkersWithoutBatches(t *testing.T) {
	env := queuetest.Start(t)
	ctx := t.Context()
	sm, err := relay.OpenSentMarkers(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := queue.BatchesAllowed(ctx, env.JS, "KV_"+relay.SentBucket); err != nil || ok {
		t.Fatalf("a new bucket takes batches before relay setup: %v %v", ok, err)
	}
	batched := batchIDs(t, env.NC)
	markRound(t, sm, 0, 64)
	if n := batched(); n != 0 {
		t.Fatalf("%d markers sent in batches to a stream that refuses them", n)
	}
}
