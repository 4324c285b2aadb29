package tokensvc

import (
	"strings"
	"testing"
	"time"

	"relay365/internal/token"
)

// refuseWrites makes the relay_tokens bucket refuse every write (a
// stream whose MaxMsgSize no sealed record fits) while reads still
// work, as a store that is out of space or losing its leader does for a
// write; the returned func lets writes through again.
func (e *env) refuseWrites() (restore func()) {
	e.t.Helper()
	s, err := e.nats.JS.Stream(e.ctx, "KV_"+token.Bucket)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := info.Config
	was := cfg.MaxMsgSize
	cfg.MaxMsgSize = 16
	if _, err := e.nats.JS.UpdateStream(e.ctx, cfg); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		e.t.Helper()
		cfg.MaxMsgSize = was
		if _, err := e.nats.JS.UpdateStream(e.ctx, cfg); err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestRefresherRetriesAfterTheStoreRefusedAWrite: a proactive refresh
// whose lease write the store refuses changes nothing in the record;
// the schedule must try again after a pause (1 s doubling to 1 min,
// design.md §9.3), so once the store takes writes again the token is
// refreshed before it expires, with no mail flowing to ask for it.
func TestRefresherRetriesAfterTheStoreRefusedAWrite(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.consent("alerts")
	exp := e.record("alerts").Expiry
	restore := e.refuseWrites()

	e.clock.Set(exp.Add(-time.Minute)) // past the due time
	e.eventually("the refused write to be logged", func() bool {
		return strings.Contains(e.logs.String(), "proactive refresh did not yield a token")
	})
	restore()
	// The retry pauses are at most a minute (and a fifth): step the clock
	// until the token is refreshed, always short of its expiry.
	e.eventually("the refresh after the store took writes again", func() bool {
		if e.record("alerts").Expiry.After(exp) {
			return true
		}
		if e.clock.Now().Before(exp.Add(-5 * time.Second)) {
			e.clock.Advance(time.Second)
		}
		return false
	})
}

// TestRotatedRefreshTokenSurvivesAStoreThatRefusesAWhile: the identity
// platform has answered with a rotated refresh token and the store
// refuses the write for a moment (a leader election, a full disk being
// cleared). The token service must keep trying within its store timeout
// rather than drop the rotated token at the first refusal: a platform
// that revokes a refresh token when it issues the next (the strict fake,
// oidc-provider, Keycloak with refresh token revocation) would then
// refuse the previous one, and the account would need a person to sign
// in again.
func TestRotatedRefreshTokenSurvivesAStoreThatRefusesAWhile(t *testing.T) {
	e := newEnv(t)
	f := newAnswerFront(e)
	e.replica("r1")
	e.consentThrough(f, "alerts")
	before := e.record("alerts").RefreshToken
	entered, release := f.hold()

	e.clock.Advance(time.Minute)
	got := make(chan error, 1)
	go func() {
		_, err := e.client().ForceRefresh(e.ctx, "alerts")
		got <- err
	}()
	<-entered // the lease is written; the request waits at the front
	restore := e.refuseWrites()
	release()
	e.eventually("the refused result write to be logged", func() bool {
		return strings.Contains(e.logs.String(), "the store refused the result") ||
			strings.Contains(e.logs.String(), "result could not be stored")
	})
	restore()
	if err := <-got; err != nil {
		t.Fatalf("forced refresh: %v", err)
	}
	e.eventually("the rotated refresh token to be stored", func() bool {
		rec := e.record("alerts")
		return rec.RefreshToken != before && rec.LeaseOwner == ""
	})

	// The stored refresh token is the one the platform holds valid.
	e.clock.Advance(time.Minute)
	if _, err := e.client().ForceRefresh(e.ctx, "alerts"); err != nil {
		t.Fatalf("refresh with the stored refresh token: %v", err)
	}
	if st := e.record("alerts").State; st != token.StateHealthy {
		t.Fatalf("state %s after the second refresh, want healthy", st)
	}
}
