package tokensvc

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"relay365/internal/fakeo365"
	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

// holdTransport holds every request to the identity platform until
// release is closed, and reports each one on entered before it holds it:
// a replica whose call to Microsoft is slow, on the real network stack.
type holdTransport struct {
	entered chan struct{}
	release chan struct{}
}

func newHoldTransport() *holdTransport {
	return &holdTransport{entered: make(chan struct{}, 8), release: make(chan struct{})}
}

func (h *holdTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h.entered <- struct{}{}
	select {
	case <-h.release:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	return http.DefaultTransport.RoundTrip(r)
}

// holdRefresh starts replica r1 with its calls to the identity platform
// held (hold), consents alerts (first: its record then) and sets the
// clock to that token's expiry plus offset: r1's refresh comes due,
// takes the lease and is held at the identity platform when it returns.
func (e *env) holdRefresh(offset time.Duration) (hold *holdTransport, r1 *Service, reg1 *prometheus.Registry, first token.Record) {
	e.t.Helper()
	hold = newHoldTransport()
	r1, reg1 = e.replicaWith(Config{Instance: "r1", HTTPClient: &http.Client{Transport: hold}})
	e.consent("alerts")
	first = e.record("alerts")
	e.eventually("r1 to schedule the refresh", func() bool { return len(e.clock.Pending()) > 0 })
	e.clock.Set(first.Expiry.Add(offset))
	<-hold.entered
	return hold, r1, reg1, first
}

// TestLateInvalidGrantAfterTakeoverRaisesNothing: replica r1 takes the
// refresh lease and its call to the identity platform is slow; its lease
// runs out, r2 takes over and refreshes with the same refresh token, which
// the strict-rotation fake then spends. r1's call finally arrives and is
// answered invalid_grant (AADSTS70008, reused refresh token). The account
// is healthy (r2 stored a fresh token), so r1 must use that token and
// raise nothing: no needs_consent in its metrics, no
// relay.events.account.consent_required, no failure written over r2's
// record.
func TestLateInvalidGrantAfterTakeoverRaisesNothing(t *testing.T) {
	e := newEnv(t)
	// r1's proactive refresh comes due, takes the lease and is held at
	// the identity platform.
	hold, _, reg1, first := e.holdRefresh(-time.Minute)
	leased := e.record("alerts")
	if token.LeaseInstance(leased) != "r1" {
		t.Fatalf("lease holder %q, want r1", token.LeaseInstance(leased))
	}

	// r1's lease runs out; r2 takes over and stores a fresh token.
	_, reg2 := e.replica("r2")
	e.clock.Set(leased.LeaseUntil.Add(time.Second))
	e.eventually("r2 to refresh", func() bool {
		rec := e.record("alerts")
		return rec.LastRefresh.After(first.LastRefresh) && rec.LeaseOwner == ""
	})
	fresh := e.record("alerts")
	ok := map[string]string{"account": "alerts", "result": "ok"}
	if n := tokentest.Metric(t, reg2, "relay_token_refresh_total", ok); n != 1 {
		t.Fatalf("r2 counted %v successful refreshes, want 1", n)
	}

	// r1's call goes through now, with the refresh token r2 spent.
	close(hold.release)
	e.eventually("r1's late answer to be handled", func() bool {
		return strings.Contains(e.logs.String(), "newer token was stored meanwhile") ||
			tokentest.Metric(t, reg1, "relay_token_refresh_total", map[string]string{"account": "alerts", "result": "needs_consent"}) > 0
	})
	if r := e.fake.RefreshReuses(); r != 1 {
		t.Fatalf("the fake saw %d reused refresh tokens, want 1 (r1's late call)", r)
	}
	if n := tokentest.Metric(t, reg1, "relay_token_refresh_total", map[string]string{"account": "alerts", "result": "needs_consent"}); n != 0 {
		t.Fatalf("r1 counted %v needs_consent refreshes for a healthy account", n)
	}
	if ev := e.events.String(); strings.Contains(ev, "consent_required") || strings.Contains(ev, "refresh_failed") {
		t.Fatalf("r1 published a failure for a healthy account:\n%s", ev)
	}
	rec := e.record("alerts")
	if rec.State != token.StateHealthy || rec.AccessToken != fresh.AccessToken || rec.RefreshToken != fresh.RefreshToken || rec.FailCount != 0 {
		t.Fatalf("record after r1's late failure: %v (fail_count %d), want r2's %v", rec, rec.FailCount, fresh)
	}
	// Workers get r2's token from either replica.
	c := e.client()
	tok, err := c.Token(e.ctx, "alerts")
	if err != nil || tok.Token != fresh.AccessToken {
		t.Fatalf("token.get after the takeover: %v %v", tok, err)
	}
	if _, ok := e.fake.AccessTokenValid(tok.Token); !ok {
		t.Fatal("the token handed out is not live at the fake")
	}
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 2 {
		t.Fatalf("%d refresh calls at the fake, want 2 (r1's late one, r2's)", n)
	}
}

// TestDeadHolderLeaseGivesWorkersATemporaryErrorInTime: replica r1 takes
// the refresh lease of an expired token and stops before it stored
// anything (Close abandons the call, as a crash would): its lease stays
// until LeaseUntil. A worker's token.get answered by r2 meanwhile must not
// wait for the whole dead lease (the worker's request would time out
// first, and the refresh r2 then takes over would have little of it left):
// after LeaseWait it gets a 503 naming the replica that holds the refresh,
// and once the dead lease has ended it gets a fresh token, refreshed once.
func TestDeadHolderLeaseGivesWorkersATemporaryErrorInTime(t *testing.T) {
	e := newEnv(t)
	_, r1, _, first := e.holdRefresh(time.Second) // expired: nothing usable left
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	leased := e.record("alerts")
	if token.LeaseInstance(leased) != "r1" || !e.clock.Now().Before(leased.LeaseUntil) {
		t.Fatalf("r1's lease is gone: %q until %v", leased.LeaseOwner, leased.LeaseUntil)
	}

	e.replicaWith(Config{Instance: "r2", LeaseWait: 200 * time.Millisecond})
	// The worker's patience, as its request timeout: far above LeaseWait,
	// far below the dead lease's wall-time equivalent.
	c := NewClient(ClientConfig{NC: e.conn("worker"), Now: e.clock.Now, Timeout: 15 * time.Second})
	// r2's service subscribes on a connection of its own: until the server
	// has its interest, a request finds no responder at all.
	var err error
	e.eventually("r2 to serve token.get", func() bool {
		_, err = c.Token(e.ctx, "alerts")
		return !errors.Is(err, nats.ErrNoResponders)
	})
	var se *ServiceError
	if !errors.As(err, &se) || se.Code != CodeUnavailable || !strings.Contains(se.Description, "r1") {
		t.Fatalf("token.get during a dead replica's lease: %v, want a 503 naming r1", err)
	}
	if !strings.Contains(se.Description, "in progress elsewhere") {
		t.Fatalf("503 does not say why: %q", se.Description)
	}

	// The dead lease ends: the next token.get takes over and refreshes.
	e.clock.Set(leased.LeaseUntil.Add(time.Second))
	tok, err := c.Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.fake.AccessTokenValid(tok.Token); !ok || tok.Token == first.AccessToken {
		t.Fatalf("token after the takeover: %v", tok)
	}
	if n, r := e.fake.TokenCalls(fakeo365.GrantRefreshToken), e.fake.RefreshReuses(); n != 1 || r != 0 {
		t.Fatalf("%d refresh calls at the fake (%d reused), want 1 (r1's never left)", n, r)
	}
}
