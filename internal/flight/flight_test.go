package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitCallers polls until key's call in flight has n callers.
func waitCallers[K comparable, V any](t *testing.T, g *Group[K, V], key K, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		g.mu.Lock()
		c := g.calls[key]
		ok := c != nil && c.callers == n
		g.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("never %d callers on %v", n, key)
		case <-tick.C:
		}
	}
}

func TestOneCallPerKey(t *testing.T) {
	var g Group[string, int]
	var runs atomic.Int64
	release := make(chan struct{})
	fn := func() (int, error) {
		runs.Add(1)
		<-release
		return 42, nil
	}
	const n = 20
	var wg sync.WaitGroup
	results := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); results[i], _ = g.Do(context.Background(), "a", fn) }()
	}
	waitCallers(t, &g, "a", n)
	close(release)
	wg.Wait()
	for i, r := range results {
		if r != 42 {
			t.Fatalf("caller %d got %d", i, r)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times for %d concurrent callers", runs.Load(), n)
	}
	// A finished call is not reused, and keys are independent.
	if v, err := g.Do(context.Background(), "a", func() (int, error) { return 7, nil }); v != 7 || err != nil {
		t.Fatal(v, err)
	}
}

func TestCallerCancelDoesNotCancelTheCall(t *testing.T) {
	var g Group[string, string]
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", func() (string, error) { <-release; return "stored", nil })
		first <- err
	}()
	waitCallers(t, &g, "k", 1)
	second := make(chan string, 1)
	go func() {
		v, _ := g.Do(context.Background(), "k", func() (string, error) { return "second run", nil })
		second <- v
	}()
	waitCallers(t, &g, "k", 2)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(release)
	if v := <-second; v != "stored" {
		t.Fatalf("the other caller got %q: the call was cancelled or run again", v)
	}
}
