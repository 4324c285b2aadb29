package tokensvc

import (
	"errors"
	"testing"
	"time"

	"relay365/internal/fakeo365"
	"relay365/internal/token"
)

// TestForcedRefreshHonoursTheBackoff: after a transient failure (503
// temporarily_unavailable, Retry-After) the record's next_attempt holds
// every refresh back, forced ones too: workers whose token is refused
// (535 5.7.3) while the identity platform is failing get the transient
// error with the time left, and the identity platform is not asked again
// before next_attempt ("never sooner than Retry-After", README, Tokens).
func TestForcedRefreshHonoursTheBackoff(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.consent("alerts")
	e.clock.Advance(time.Minute) // the refusals come after the token was issued
	c := e.client()
	held, err := c.Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	e.fake.FailNextTokenCalls(100) // 503, Retry-After: 1

	for i := range 5 {
		if _, err := c.Token(e.ctx, "alerts"); err != nil { // cache it again, as the worker would
			t.Fatal(err)
		}
		_, err := c.ForceRefresh(e.ctx, "alerts")
		var ie *token.IdentityError
		if !errors.As(err, &ie) || ie.Class != token.StateTransient || (i > 0 && ie.RetryAfter <= 0) {
			t.Fatalf("forced refresh %d while the identity platform fails: %v", i+1, err)
		}
	}
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh requests within the backoff after one 503, want 1", n)
	}
	rec := e.record("alerts")
	if rec.State != token.StateHealthy || rec.AccessToken != held.Token || rec.FailCount != 1 {
		t.Fatalf("record after the refusals: %v", rec)
	}

	// After next_attempt a forced refresh goes to the identity platform.
	e.fake.FailNextTokenCalls(0)
	e.clock.Set(rec.NextAttempt)
	if _, err := c.Token(e.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	tok, err := c.ForceRefresh(e.ctx, "alerts")
	if err != nil || tok.Token == held.Token {
		t.Fatalf("forced refresh after the backoff: %v, %v", tok, err)
	}
	if r := e.fake.RefreshReuses(); r != 0 {
		t.Fatalf("%d reused refresh tokens", r)
	}
}
