package token

import (
	"errors"
	"sync"
	"testing"
	"time"

	"relay365/internal/clock"
)

// processAt is process with its own clock, skewed from the harness's by
// skew, and a short LeaseWait: a replica on another host.
func (h *harness) processAt(skew time.Duration) (*env, *clock.Fake) {
	h.t.Helper()
	c := clock.NewFake(h.clock.Now().Add(skew))
	return h.processWith(SourceConfig{Now: c.Now, LeaseWait: 100 * time.Millisecond}), c
}

// TestLeaseSkewDoesNotEndALease: replicas whose clocks run ahead of the
// lease holder's read its lease_until (the holder's clock plus the TTL)
// as ended early; one more than a TTL ahead took the lease over while the
// holder's call was still at the identity platform, and the refresh
// token was presented twice. A lease now ends for a replica no sooner
// than a TTL after it first read it, on its own clock (Source.LeaseEnd),
// so no skew lets it take over early; once it has seen the lease for a
// TTL (the holder is gone), it takes over by compare-and-set.
func TestLeaseSkewDoesNotEndALease(t *testing.T) {
	h := newHarness(t)
	a := h.process()
	h.consent(a, "alerts", false, h.clock.Now().Add(-time.Second)) // expired
	entered, open := h.idp.setGate()
	release := sync.OnceFunc(open)
	defer release()

	resA := make(chan error, 1)
	go func() {
		_, err := a.src.Token(h.ctx, "alerts")
		resA <- err
	}()
	<-entered // A holds the lease; its call is at the identity platform
	rec, _, err := a.store.Get(h.ctx, "alerts")
	if err != nil || rec.LeaseOwner == "" {
		t.Fatalf("A's lease: %v %v", rec, err)
	}

	var clocks []*clock.Fake
	for _, skew := range []time.Duration{50 * time.Second, defaultLeaseTTL + time.Second, time.Hour} {
		p, c := h.processAt(skew)
		clocks = append(clocks, c)
		if _, err := p.src.Token(h.ctx, "alerts"); !errors.Is(err, ErrRefreshInProgress) {
			t.Fatalf("replica %v ahead during A's lease: %v, want ErrRefreshInProgress", skew, err)
		}
		if n := h.idp.calls.Load(); n != 1 {
			t.Fatalf("identity calls with a replica %v ahead: %d, want 1 (the refresh token presented twice)", skew, n)
		}
		// Half a lease later on its own clock: still A's.
		c.Advance(defaultLeaseTTL / 2)
		if _, err := p.src.Token(h.ctx, "alerts"); !errors.Is(err, ErrRefreshInProgress) {
			t.Fatalf("replica %v ahead, half a lease later: %v, want ErrRefreshInProgress", skew, err)
		}
	}

	// A whole lease after it first read the lease (A is gone, as far as
	// anyone can tell), the replica an hour ahead takes over.
	late, c := h.processAt(time.Hour)
	if _, err := late.src.Token(h.ctx, "alerts"); !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("new replica: %v", err)
	}
	c.Advance(defaultLeaseTTL)
	resLate := make(chan error, 1)
	go func() {
		_, err := late.src.Token(h.ctx, "alerts")
		resLate <- err
	}()
	<-entered // its call, after a whole lease on its own clock
	release()
	if err := <-resLate; err != nil {
		t.Fatal(err)
	}
	<-resA
}
