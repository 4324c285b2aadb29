package tokensvc

import (
	"errors"
	"strings"
	"testing"
	"time"

	"relay365/internal/fakeo365"
	"relay365/internal/token"
)

// TestReplayedRecordIsRefused is the replay attack of SECURITY.md: the
// NATS administrator, who may write every bucket but holds no key,
// captures an account's sealed record, waits for a refresh (or a new
// consent that binds the account elsewhere), and writes the captured
// bytes back. They open (same key, same account), but their generation is
// older than the one the running token services have seen: the services
// refuse the record instead of handing out its tokens or refreshing with
// its spent refresh token, and say so.
func TestReplayedRecordIsRefused(t *testing.T) {
	e := newEnv(t)
	_, _ = e.replica("r1")
	_, _ = e.replica("r2")
	e.consent("alerts")
	first := e.record("alerts")
	kv, err := e.nats.JS.KeyValue(e.ctx, token.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	captured, err := kv.Get(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}

	// A refresh writes a newer generation.
	e.eventually("the replicas to schedule the refresh", func() bool { return len(e.clock.Pending()) >= 2 })
	e.clock.Set(first.Expiry.Add(-time.Minute))
	e.eventually("the refresh", func() bool {
		r := e.record("alerts")
		return r.LastRefresh.After(first.LastRefresh) && r.LeaseOwner == ""
	})
	fresh := e.record("alerts")
	if fresh.Generation <= first.Generation {
		t.Fatalf("generation after the refresh %d, consent's %d", fresh.Generation, first.Generation)
	}
	c := e.client()
	if tok, err := c.Token(e.ctx, "alerts"); err != nil || tok.Token != fresh.AccessToken {
		t.Fatalf("token.get before the replay: %v %v", tok, err)
	}

	// The replay.
	if _, err := kv.Put(e.ctx, "alerts", captured.Value()); err != nil {
		t.Fatal(err)
	}
	c2 := e.client() // no cached token
	for range 4 {    // whichever replica answers
		tok, err := c2.Reload(e.ctx, "alerts")
		var se *ServiceError
		if !errors.As(err, &se) || se.Code != CodeUnavailable || !strings.Contains(se.Description, "replayed") {
			t.Fatalf("token.get of a replayed record: %v %v, want a 503 that says replayed", tok, err)
		}
	}
	e.eventually("the refresher to report the replayed record", func() bool {
		return strings.Contains(e.logs.String(), "token record replayed")
	})
	st, err := c2.StatusOf(e.ctx, "alerts")
	if err != nil || st.State != "unreadable" {
		t.Fatalf("status of a replayed record: %+v %v, want unreadable", st, err)
	}
	// Nothing refreshed with the replayed (spent) refresh token.
	if r := e.fake.RefreshReuses(); r != 0 {
		t.Fatalf("the replayed refresh token was presented %d times", r)
	}
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh calls, want 1", n)
	}

	// A new consent is the remedy, and is accepted by the running replicas.
	e.consent("alerts")
	again := e.record("alerts")
	if tok, err := c2.Reload(e.ctx, "alerts"); err != nil || tok.Token != again.AccessToken {
		t.Fatalf("token.get after a new consent: %v %v", tok, err)
	}
}
