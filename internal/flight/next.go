package flight

import (
	"context"
	"sync"
)

// Next runs a computation for many concurrent callers at most one at a
// time, without serving any caller a result older than its call. Where
// Group shares the call in flight, Next makes a caller join the next run
// that starts after it arrived: at once when nothing runs, else when the
// run in progress ends. So at most one run is in progress and one waits,
// whatever the number of callers, and every caller sees a state taken
// after it asked. The daemon's /status and /readyz use it: each reads
// the account registry, unseals every token record and reads every lane,
// and probes, dashboards and people asking at once would each pay that.
// Run must be set before the first Do.
type Next[V any] struct {
	// Run computes the value with its own context: a caller that leaves
	// does not end the run for the others waiting on it.
	Run func() (V, error)

	mu      sync.Mutex
	running *call[V] // nil: nothing runs (and next is nil)
	next    *call[V] // starts when running ends; joined by callers arriving meanwhile
}

// Do waits for the result of a run that starts after the call, or for
// ctx to end.
func (n *Next[V]) Do(ctx context.Context) (V, error) {
	n.mu.Lock()
	var c *call[V]
	switch {
	case n.running == nil:
		c = &call[V]{done: make(chan struct{})}
		n.running = c
		go n.run(c)
	case n.next == nil:
		n.next = &call[V]{done: make(chan struct{})}
		fallthrough
	default:
		c = n.next
	}
	c.callers++
	n.mu.Unlock()
	return c.wait(ctx)
}

// run runs c, then the run that waited for it, if any.
func (n *Next[V]) run(c *call[V]) {
	for c != nil {
		c.val, c.err = n.Run()
		close(c.done)
		n.mu.Lock()
		c, n.next = n.next, nil
		n.running = c
		n.mu.Unlock()
	}
}
