package token

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
)

// processAt is process with its own clock, skewed from the harness's by
// skew, and a short LeaseWait: a replica on another host.
func (h *harness) processAt(skew time.Duration) *env {
	h.t.Helper()
	js := connectJetStream(h.t, h.url)
	reg, err := account.OpenRegistry(h.ctx, js)
	if err != nil {
		h.t.Fatal(err)
	}
	st, err := OpenStore(h.ctx, js, h.keys)
	if err != nil {
		h.t.Fatal(err)
	}
	c := clock.NewFake(h.clock.Now().Add(skew))
	src := NewSource(SourceConfig{
		Store: st, Accounts: reg, Now: c.Now, LeaseWait: 100 * time.Millisecond,
		Log:        zerolog.New(h.logs).Level(zerolog.DebugLevel),
		HTTPClient: &http.Client{Timeout: 10 * time.Second},
	})
	return &env{js: js, reg: reg, store: st, src: src}
}

// TestLeaseSkewTolerance pins down what the refresh lease tolerates of
// clock skew between replicas (docs/design.md §9.4, "Clocks"). Leases are
// taken by compare-and-set on the KV revision, but whether a lease has
// ended is read on each replica's own clock. A holds the lease, its call
// at the identity platform. B's clock runs 50s ahead of A's, within the
// 60s lease: B does not take over, it answers ErrRefreshInProgress. C's
// clock runs 61s ahead, beyond the lease: C takes over while A's call is
// still at the identity platform, and the same refresh token is
// presented twice: the documented limit, which is why token hosts must
// keep their clocks synchronised.
func TestLeaseSkewTolerance(t *testing.T) {
	h := newHarness(t)
	a := h.process()
	b := h.processAt(50 * time.Second)
	c := h.processAt(defaultLeaseTTL + time.Second)
	h.consent(a, "alerts", false, h.clock.Now().Add(-time.Second)) // expired
	entered, release := h.idp.setGate()

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

	if _, err := b.src.Token(h.ctx, "alerts"); !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("B (50s ahead) during A's lease: %v, want ErrRefreshInProgress", err)
	}
	if n := h.idp.calls.Load(); n != 1 {
		t.Fatalf("identity calls with B 50s ahead: %d, want 1", n)
	}

	resC := make(chan error, 1)
	go func() {
		_, err := c.src.Token(h.ctx, "alerts")
		resC <- err
	}()
	<-entered // C took the lease over by compare-and-set and calls too
	release()
	if err := <-resC; err != nil {
		t.Fatalf("C: %v", err)
	}
	if err := <-resA; err != nil {
		t.Fatalf("A: %v", err)
	}
	if reuse, _ := h.idp.snapshot(); reuse != 1 {
		t.Fatalf("refresh token presented %d extra times, want 1 (the documented limit of a skew beyond the lease)", reuse)
	}
}
