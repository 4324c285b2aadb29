package relay_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/consent"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// Stopping many idle lanes (issue 18: relay serve with 2,000 accounts took
// 21–37 s from SIGTERM to exit). Every lane of an idle engine has a pull
// open at the server for as long as its wait; Run must end them when it
// stops, not wait for them to expire. The pulls here wait a minute and
// the grace for sends is longer still, so a Run that waited for either
// would miss the bound by far; an engine that cancels its pulls returns
// within a fraction of it.
func TestStopDoesNotWaitForOpenPulls(t *testing.T) {
	const (
		lanes = 200
		pull  = time.Minute
		// bound is a failure bound, not a measurement: far below pull.
		bound = 10 * time.Second
	)
	h := newHarness(t, setup{
		timeout:     3 * time.Minute,
		manualStart: true,
		engine:      relay.Config{FetchWait: pull, IdleFetchWait: pull, ShutdownGrace: 2 * pull},
	})
	// Consent as authtool gives it, without the test mail, eight at a
	// time (as BenchmarkManyMailboxes enrols its mailboxes).
	aliases := make([]string, lanes)
	enrol := consent.Enroller{Accounts: h.accounts, Store: h.store, SkipTestMail: true}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, lanes)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < lanes; i = int(next.Add(1)) - 1 {
				alias := fmt.Sprintf("stop%03d", i)
				aliases[i] = alias
				a := h.fake.Account(alias, alias+"@contoso.com", "contoso")
				if err := enrol.SignIn(h.ctx, a, consent.FollowURL(h.ctx)); err != nil {
					errs <- fmt.Errorf("enrol %s: %w", alias, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.engine.Run(ctx) }()
	for _, alias := range aliases {
		if err := h.engine.WaitBound(h.ctx, alias); err != nil {
			t.Fatal(err)
		}
	}
	// Every lane's pull is open at the server: its consumer has a waiting
	// request (which expires a minute after it was made).
	for _, alias := range aliases {
		for {
			info, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.AccountConsumer(alias))
			if err != nil {
				t.Fatal(err)
			}
			if info.CachedInfo().NumWaiting > 0 {
				break
			}
			select {
			case <-h.ctx.Done():
				t.Fatalf("%s: no pull open", alias)
			case <-time.After(20 * time.Millisecond): // polling the server's view
			}
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(bound):
		t.Fatalf("Run did not return within %v of its stop, with %d lanes whose pulls wait %v", bound, lanes, pull)
	}
}
