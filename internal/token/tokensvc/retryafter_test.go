package tokensvc

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

// TestRetryAfterIsJittered: when the identity platform throttles (429
// with Retry-After), every account it throttled at once must not come back
// at the same instant, or the retries arrive as the same burst that was
// throttled. The wait is never below Retry-After and is spread above it
// ("2 s doubling to 5 min, jittered, never below Retry-After",
// docs/office365.md §2.4).
func TestRetryAfterIsJittered(t *testing.T) {
	e := newEnv(t)
	f := newAnswerFront(e)
	e.replica("r1")
	const n = 8
	for i := range n {
		e.consentThrough(f, fmt.Sprintf("acct%d", i))
	}
	f.answerWithHeader(http.StatusTooManyRequests, "application/json", `{"error":"temporarily_unavailable"}`, "Retry-After", "120")
	e.clock.Advance(time.Minute)
	now := e.clock.Now()
	c := e.client()
	waits := map[time.Duration]bool{}
	for i := range n {
		_, err := c.ForceRefresh(e.ctx, fmt.Sprintf("acct%d", i))
		var ie *token.IdentityError
		if !errors.As(err, &ie) || ie.Class != token.StateTransient {
			t.Fatalf("throttled refresh: %v", err)
		}
		wait := e.record(fmt.Sprintf("acct%d", i)).NextAttempt.Sub(now)
		if wait < 120*time.Second {
			t.Fatalf("next attempt in %v, before Retry-After (120s)", wait)
		}
		waits[wait] = true
	}
	if len(waits) == 1 {
		t.Fatalf("all %d throttled accounts retry at the same instant, %v after the 429: no jitter above Retry-After", n, waits)
	}
}

// TestAnsweredRetryAfterIsBounded: the wait a token service answer
// carries is held within [0, token.MaxRetryAfter] before it is converted,
// so a value out of range cannot overflow into a negative or tiny wait.
func TestAnsweredRetryAfterIsBounded(t *testing.T) {
	for ms, want := range map[int64]time.Duration{
		0:                     0,
		1500:                  1500 * time.Millisecond,
		-5:                    0,
		3_600_000:             time.Hour,
		9_223_372_036_854_775: time.Hour, // ×1e6 overflows int64 nanoseconds
		1<<63 - 1:             time.Hour,
	} {
		if got := retryAfter(ms); got != want {
			t.Errorf("retryAfter(%d) = %s, want %s", ms, got, want)
		}
	}
}

// TestStateTurnsTransientWhenTheTokenExpiresDuringABackoff: a refresh
// that fails transiently while the access token is still valid leaves
// the state healthy (office365.md §2.4), but once that token expires with
// the next attempt still ahead (a Retry-After of an hour), no valid token
// is left and workers are refused: the state must say transient then,
// in the record, relay_token_state and /status, not only after the next
// attempt an hour later. RelayTokenRefreshFailing's second half waits on
// exactly that gauge.
func TestStateTurnsTransientWhenTheTokenExpiresDuringABackoff(t *testing.T) {
	e := newEnv(t)
	f := newAnswerFront(e)
	_, reg := e.replica("r1")
	e.consentThrough(f, "alerts")
	exp := e.record("alerts").Expiry
	f.answerWithHeader(http.StatusTooManyRequests, "application/json", `{"error":"temporarily_unavailable"}`, "Retry-After", "3600")

	e.clock.Set(exp.Add(-time.Minute)) // past the proactive refresh's due time
	e.eventually("the throttled refresh to be recorded", func() bool { return e.record("alerts").FailCount == 1 })
	if rec := e.record("alerts"); rec.State != token.StateHealthy || !rec.NextAttempt.After(exp) {
		t.Fatalf("after the throttled refresh: state %s, next attempt %v; want healthy (token still valid), next attempt after the expiry %v", rec.State, rec.NextAttempt, exp)
	}

	e.clock.Set(exp.Add(time.Second))
	transient := map[string]string{"account": "alerts", "state": string(token.StateTransient)}
	e.eventually("the state to turn transient at the expiry", func() bool {
		return e.record("alerts").State == token.StateTransient && tokentest.Metric(t, reg, "relay_token_state", transient) == 1
	})
	acct, err := e.reg.Get(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	st, err := Describe(e.ctx, e.store, acct, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.State != string(token.StateTransient) || st.NextAttempt.IsZero() {
		t.Errorf("/status shows %s (next attempt %v), want transient with the next attempt", st.State, st.NextAttempt)
	}
	if n := f.refreshCalls(); n != 1 {
		t.Errorf("%d refresh requests, want 1 (the next is after Retry-After)", n)
	}
}

// A token endpoint that answers a refresh with a redirect is not
// followed: net/http sends a 307's body again, refresh token included, to
// wherever Location says, http:// too. The refresh fails (transient) and
// the other host gets nothing.
func TestTokenEndpointRedirectIsNotFollowed(t *testing.T) {
	e := newEnv(t)
	f := newAnswerFront(e)
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	t.Cleanup(other.Close)
	e.replica("r1")
	e.consentThrough(f, "alerts")
	exp := e.record("alerts").Expiry
	f.answerWithHeader(http.StatusTemporaryRedirect, "", "", "Location", other.URL+"/steal")

	e.clock.Set(exp.Add(-time.Minute)) // past the proactive refresh's due time
	e.eventually("the redirected refresh to be recorded", func() bool { return e.record("alerts").FailCount == 1 })
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect was followed: %d requests reached the other host", n)
	}
	if rec := e.record("alerts"); rec.State.Blocking() {
		t.Errorf("a redirect answered: state %s, want a transient failure (healthy while the token is valid)", rec.State)
	}
}
