package producer_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"relay365/internal/account"
	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

// One Producer shared by many goroutines (run with -race): each
// publishes the same 20 ids, alone and in batches, while Limit's cache
// is read and filled; every id is queued once and every other publish
// of it is a duplicate.
func TestPublishConcurrently(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p := withAccounts(t, ctx, env, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"})
	const workers, ids = 8, 20
	var fresh, dups atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			count := func(r producer.Result) {
				if r.Duplicate {
					dups.Add(1)
				} else {
					fresh.Add(1)
				}
			}
			if w%2 == 0 {
				for i := range ids {
					r, err := p.Publish(ctx, alert(fmt.Sprintf("same-%d", i)))
					if err != nil {
						t.Error(err)
						return
					}
					count(r)
					p.Limit(ctx, "alerts")
				}
				return
			}
			batch := make([]*producer.Message, ids)
			for i := range batch {
				batch[i] = alert(fmt.Sprintf("same-%d", i))
			}
			rs, err := p.PublishBatch(ctx, batch)
			if err != nil {
				t.Error(err)
				return
			}
			for _, r := range rs {
				count(r)
			}
		})
	}
	wg.Wait()
	if fresh.Load() != ids || dups.Load() != (workers-1)*ids {
		t.Errorf("%d fresh and %d duplicate results, want %d and %d", fresh.Load(), dups.Load(), ids, (workers-1)*ids)
	}
	if n := queued(t, ctx, env.JS); n != ids {
		t.Fatalf("%d queued, want %d", n, ids)
	}
}
