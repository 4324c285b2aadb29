package daemon

import (
	"context"
	"sync"
)

// coalescer runs a computation for many concurrent callers at most one
// at a time, without serving any caller a result older than its request.
//
// /status and /readyz each read the account registry, every token record
// (unsealing it) and every lane's state. Probes, dashboards and people
// asking at once would each pay that, up to the HTTP server's connection
// limit at once. A caller joins the next run that starts after it
// arrived: at once when nothing runs, else when the run in progress ends.
// So at most one run is in progress and one waits, whatever the number of
// callers, and every caller sees a state taken after its request came in.
type coalescer[T any] struct {
	// run computes the value with its own context: a caller that leaves
	// does not end the run for the others waiting on it.
	run func() (T, error)

	mu      sync.Mutex
	running *coalesced[T] // nil: nothing runs (and next is nil)
	next    *coalesced[T] // starts when running ends; joined by callers arriving meanwhile
}

type coalesced[T any] struct {
	done    chan struct{}
	v       T
	err     error
	callers int // how many callers wait for it (under the coalescer's mu)
}

// get waits for the result of a run that starts after the call, or for
// ctx to end.
func (c *coalescer[T]) get(ctx context.Context) (T, error) {
	c.mu.Lock()
	var call *coalesced[T]
	switch {
	case c.running == nil:
		call = &coalesced[T]{done: make(chan struct{})}
		c.running = call
		go c.do(call)
	case c.next == nil:
		c.next = &coalesced[T]{done: make(chan struct{})}
		fallthrough
	default:
		call = c.next
	}
	call.callers++
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.v, call.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// do runs call, then the run that waited for it, if any.
func (c *coalescer[T]) do(call *coalesced[T]) {
	for call != nil {
		call.v, call.err = c.run()
		close(call.done)
		c.mu.Lock()
		call, c.next = c.next, nil
		c.running = call
		c.mu.Unlock()
	}
}
