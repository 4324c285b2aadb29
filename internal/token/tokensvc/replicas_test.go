package tokensvc

import (
	"testing"
	"time"

	"relay365/internal/fakeo365"
	"relay365/internal/token/tokentest"
)

// TestTwoReplicasRefreshBeforeExpiryOnce: two token service replicas (one
// process, separate NATS connections, one JetStream) both schedule the
// proactive refresh of an account; when both come due, the identity
// platform sees exactly one refresh request, the strict-rotation fake sees
// no refresh token presented twice, and both replicas then park on the new
// token's due time.
func TestTwoReplicasRefreshBeforeExpiryOnce(t *testing.T) {
	e := newEnv(t)
	_, reg1 := e.replica("r1")
	_, reg2 := e.replica("r2")
	e.consent("alerts")
	exp := e.record("alerts").Expiry

	inMargin := func(d time.Time) bool { return !d.Before(exp.Add(-5*time.Minute)) && d.Before(exp) }
	e.eventually("both replicas to schedule the refresh", func() bool {
		n := 0
		for _, d := range e.clock.Pending() {
			if inMargin(d) {
				n++
			}
		}
		return n == 2
	})
	// Past both replicas' due times (jitter < margin/5), token still valid.
	e.clock.Set(exp.Add(-time.Minute))

	ok := func() float64 {
		l := map[string]string{"account": "alerts", "result": "ok"}
		return tokentest.Metric(t, reg1, "relay_token_refresh_total", l) + tokentest.Metric(t, reg2, "relay_token_refresh_total", l)
	}
	e.eventually("the refresh", func() bool { return e.record("alerts").Expiry.After(exp) && ok() == 1 })
	next := e.record("alerts").Expiry
	e.eventually("both replicas to park on the new token", func() bool {
		n := 0
		for _, d := range e.clock.Pending() {
			if d.After(exp) && d.Before(next) {
				n++
			}
		}
		return n == 2
	})
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh requests at the identity platform from two replicas, want 1", n)
	}
	if r := e.fake.RefreshReuses(); r != 0 {
		t.Fatalf("a refresh token was presented %d extra times", r)
	}
	if got := ok(); got != 1 {
		t.Fatalf("relay_token_refresh_total{result=ok} summed over replicas = %v, want 1", got)
	}
}
