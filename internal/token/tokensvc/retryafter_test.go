package tokensvc

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"relay365/internal/token"
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
