package ingress

import (
	"context"
	"sync"

	"relay365/internal/account"
)

// cache is an in-memory copy of a KV bucket's records, filled by a list at
// start (so it is complete before the first client connects) and kept
// current by a watch, so a session reads memory, not NATS.
type cache[T any] struct {
	mu sync.RWMutex
	m  map[string]T
}

func (c *cache[T]) set(key string, v T, present bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if present {
		c.m[key] = v
	} else {
		delete(c.m, key)
	}
}

func (c *cache[T]) get(key string) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[key]
	return v, ok
}

// each calls f with every record under the read lock, until f returns
// false; f must not call the cache. Unlike a list of all records, it
// allocates nothing, so a lookup per message costs the same whatever the
// number of records.
func (c *cache[T]) each(f func(T) bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, v := range c.m {
		if !f(v) {
			return
		}
	}
}

// followAccounts copies the account registry; the watch runs on wctx, the
// first list on ctx.
func followAccounts(wctx, ctx context.Context, r *account.Registry) (*cache[account.Account], error) {
	c := &cache[account.Account]{m: map[string]account.Account{}}
	changes, err := r.Watch(wctx)
	if err != nil {
		return nil, err
	}
	list, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, a := range list {
		c.set(a.Alias, a, true)
	}
	go func() {
		for ch := range changes {
			ch.Account.Normalize()
			c.set(ch.Alias, ch.Account, !ch.Deleted && ch.Err == nil)
		}
	}()
	return c, nil
}

// followProducers copies the producer registry the same way.
func followProducers(wctx, ctx context.Context, p *Producers) (*cache[Producer], error) {
	c := &cache[Producer]{m: map[string]Producer{}}
	changes, err := p.watch(wctx)
	if err != nil {
		return nil, err
	}
	list, err := p.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, pr := range list {
		c.set(pr.Name, pr, true)
	}
	go func() {
		for e := range changes {
			pr, err := decodeProducer(e.Value)
			c.set(e.Key, pr, !e.Deleted && err == nil)
		}
	}()
	return c, nil
}
