// Package flight runs at most one call per key at a time: callers that
// arrive while it runs share its result. The token Source uses it so that
// one process refreshes an account once however many requests need it, and
// the token service client so that many workers make one request.
//
// Failure semantics: the call runs on its own goroutine, detached from
// every caller's cancellation — a caller that gives up (its context ends)
// gets its context's error at once, while the call goes on for the others
// and, for a refresh, until the rotated refresh token is stored. The call's
// own deadline is the function's business.
package flight

import (
	"context"
	"sync"
)

// Group is a set of calls in flight, by key. The zero value is ready.
type Group[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	done    chan struct{}
	val     V
	err     error
	callers int // how many Do calls share it (observability for tests)
}

// Do returns the result of fn, run once for all callers of key that arrive
// before it returns, or ctx's error if ctx ends first.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func() (V, error)) (V, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[K]*call[V]{}
	}
	c, ok := g.calls[key]
	if !ok {
		c = &call[V]{done: make(chan struct{})}
		g.calls[key] = c
		go func() {
			c.val, c.err = fn()
			g.mu.Lock()
			delete(g.calls, key)
			g.mu.Unlock()
			close(c.done)
		}()
	}
	c.callers++
	g.mu.Unlock()
	return c.wait(ctx)
}

// wait returns the call's result once it is done, or ctx's error if ctx
// ends first.
func (c *call[V]) wait(ctx context.Context) (V, error) {
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}
