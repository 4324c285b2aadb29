package flight

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNextRunsOnceForCallersMeanwhile: callers arriving while a run
// is in progress share one run that starts after it, never its result
// (taken before they asked), and a caller that leaves ends no run.
func TestNextRunsOnceForCallersMeanwhile(t *testing.T) {
	var runs atomic.Int64
	release := make(chan struct{})
	started := make(chan int64, 10)
	c := &Next[int64]{Run: func() (int64, error) {
		n := runs.Add(1)
		started <- n
		<-release
		return n, nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	first := make(chan int64, 1)
	go func() {
		v, err := c.Do(ctx)
		if err != nil {
			t.Error(err)
		}
		first <- v
	}()
	if n := <-started; n != 1 {
		t.Fatalf("run %d started first", n)
	}
	// Ten callers while run 1 is in progress, one of them leaving early.
	const callers = 10
	left, leave := context.WithCancel(ctx)
	var wg sync.WaitGroup
	got := make([]int64, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		cctx := ctx
		if i == 0 {
			cctx = left
		}
		go func() {
			defer wg.Done()
			got[i], errs[i] = c.Do(cctx)
		}()
	}
	// Wait, with a deadline, until every caller has joined run 2 before
	// letting run 1 end.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		joined := c.next != nil && c.next.callers == callers
		c.mu.Unlock()
		if joined {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no caller joined the next run")
		}
		time.Sleep(time.Millisecond)
	}
	leave()
	release <- struct{}{} // run 1 ends
	if v := <-first; v != 1 {
		t.Fatalf("the first caller got run %d, want 1", v)
	}
	if n := <-started; n != 2 {
		t.Fatalf("run %d started second", n)
	}
	release <- struct{}{} // run 2 ends
	wg.Wait()
	if runs.Load() != 2 {
		t.Fatalf("%d runs for %d callers, want 2", runs.Load(), callers+1)
	}
	for i := range callers {
		switch {
		case i == 0 && errs[i] == nil:
			t.Fatalf("the caller that left got %d, want its context's error", got[i])
		case i > 0 && (errs[i] != nil || got[i] != 2):
			t.Fatalf("caller %d got run %d (%v), want run 2: it asked while run 1 was in progress", i, got[i], errs[i])
		}
	}
	// Nothing runs now: the next caller starts a run of its own.
	go func() { release <- struct{}{} }()
	if v, err := c.Do(ctx); v != 3 || err != nil {
		t.Fatalf("a caller after the runs got %d %v, want run 3", v, err)
	}
}
