package tokensvc

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

func TestTokenGetCachedUntilNearExpiry(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.replica("r1")
	e.consent("alerts")
	c := e.client()

	tok, err := c.Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if mb, ok := e.fake.AccessTokenValid(tok.Token); !ok || mb != "alerts@contoso.com" || tok.Mailbox != mb {
		t.Fatalf("token.get gave %v (valid=%v for %q)", tok, ok, mb)
	}
	for range 10 {
		again, err := c.Token(e.ctx, "alerts")
		if err != nil || again.Token != tok.Token {
			t.Fatalf("cached token: %v %v", again, err)
		}
	}
	e.waitServed(svc, "get", 1) // the client caches
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 0 {
		t.Fatalf("%d refreshes of a fresh token", n)
	}

	// Inside the client's margin (150s) the client asks again; the
	// refresher (margin 5m) has renewed the token or is doing it now.
	e.clock.Set(tok.Expiry.Add(-2 * time.Minute))
	fresh, err := c.Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Token == tok.Token || !fresh.Expiry.After(tok.Expiry) {
		t.Fatalf("near expiry the client kept %v", fresh)
	}
	if _, ok := e.fake.AccessTokenValid(fresh.Token); !ok {
		t.Fatal("refreshed token not valid at the identity platform")
	}
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh calls, want exactly 1", n)
	}
	e.waitServed(svc, "get", 2)
}

func TestForceRefreshOnceForManyRefusals(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.replica("r2")
	e.consent("alerts")
	e.clock.Advance(time.Minute) // the refusals come after the token was issued

	// 20 workers (separate clients) hold the same token, and all get
	// 535 5.7.3 with it.
	const n = 20
	clients := make([]*Client, n)
	var held token.AccessToken
	for i := range clients {
		clients[i] = e.client()
		tok, err := clients[i].Token(e.ctx, "alerts")
		if err != nil {
			t.Fatal(err)
		}
		held = tok
	}
	var wg sync.WaitGroup
	got := make([]token.AccessToken, n)
	errs := make([]error, n)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = c.ForceRefresh(e.ctx, "alerts")
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i].Token == held.Token || got[i].Token != got[0].Token {
			t.Fatalf("client %d got %v, want the one new token", i, got[i])
		}
	}
	if c := e.fake.TokenCalls(fakeo365.GrantRefreshToken); c != 1 {
		t.Fatalf("%d refresh calls for one refused token, want 1", c)
	}
	// Refused again with the new token: a new refresh.
	e.clock.Advance(time.Minute)
	if _, err := clients[0].ForceRefresh(e.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if c := e.fake.TokenCalls(fakeo365.GrantRefreshToken); c != 2 {
		t.Fatalf("%d refresh calls, want 2", c)
	}
	if r := e.fake.RefreshReuses(); r != 0 {
		t.Fatalf("a refresh token was presented twice (%d)", r)
	}
}

func TestErrorsKeepTheirType(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.consent("alerts")
	c := e.client()

	if _, err := c.Token(e.ctx, "ghost"); !errors.Is(err, account.ErrNotFound) || !strings.Contains(err.Error(), "ghost") {
		t.Fatalf("unknown account: %v", err)
	}
	if err := e.reg.Put(e.ctx, account.Account{Alias: "bare", Mailbox: "bare@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(e.ctx, "bare"); !errors.Is(err, token.ErrNotFound) {
		t.Fatalf("no tokens: %v", err)
	}

	e.fake.RevokeAll()
	_, err := c.ForceRefresh(e.ctx, "alerts")
	var ie *token.IdentityError
	if !errors.As(err, &ie) || ie.Class != token.StateNeedsConsent || len(ie.Codes) != 1 || ie.Codes[0] != 50173 ||
		ie.Err != "invalid_grant" || ie.Status != 400 || !strings.Contains(ie.Remedy, "authtool login --account alerts") {
		t.Fatalf("revoked: %#v", err)
	}
	calls := e.fake.TokenCalls(fakeo365.GrantRefreshToken)
	if _, err := c.Token(e.ctx, "alerts"); !errors.As(err, &ie) || ie.Class != token.StateNeedsConsent {
		t.Fatalf("needs_consent not sticky: %v", err)
	}
	if e.fake.TokenCalls(fakeo365.GrantRefreshToken) != calls {
		t.Fatal("a blocked account called the identity platform")
	}

	nc := e.conn("raw")
	for _, body := range []any{"not json", Request{Account: "Bad Alias"}} {
		msg := rawRequest(t, nc, SubjectGet, body)
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != CodeBadRequest {
			t.Fatalf("bad request %v answered %q %q", body, code, msg.Header.Get(micro.ErrorHeader))
		}
	}
}

func TestNoTokenServiceIsTemporary(t *testing.T) {
	e := newEnv(t)
	_, err := e.client().Token(e.ctx, "alerts")
	var ie *token.IdentityError
	if err == nil || errors.As(err, &ie) || !strings.Contains(err.Error(), "--roles tokens") {
		t.Fatalf("no responders: %v", err)
	}
}

func TestErrorReplyRoundTrip(t *testing.T) {
	for _, in := range []error{
		&token.IdentityError{Err: "invalid_client", Codes: []int{7000215}, Status: 401, Class: token.StateConfigError, Remedy: "fix it", TraceID: "tr"},
		&token.IdentityError{Err: "temporarily_unavailable", Codes: []int{50033}, Status: 503, Class: token.StateTransient, RetryAfter: 7 * time.Second},
	} {
		code, body := errorReply(in)
		data, _ := json.Marshal(body)
		out := decodeError(code, in.Error(), data)
		if code != CodeIdentity || out.Error() != in.Error() {
			t.Fatalf("round trip: %q %v → %v", code, in, out)
		}
		var a, b *token.IdentityError
		errors.As(in, &a)
		errors.As(out, &b)
		if a.RetryAfter != b.RetryAfter || a.TraceID != b.TraceID || a.Status != b.Status {
			t.Fatalf("fields lost: %#v → %#v", a, b)
		}
	}
	// An unknown class from a newer service counts as temporary.
	out := decodeError(CodeIdentity, "x", []byte(`{"kind":"identity","class":"brand_new"}`))
	var ie *token.IdentityError
	if !errors.As(out, &ie) || ie.Class != token.StateTransient {
		t.Fatalf("unknown class: %v", out)
	}
	// A foreign error body is a plain temporary ServiceError.
	var se *ServiceError
	if err := decodeError("500", "boom", []byte("<html>")); !errors.As(err, &se) || se.Code != "500" {
		t.Fatalf("foreign: %v", err)
	}
}

func TestStatusShowsErrorsNotSecrets(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.replica("r1")
	e.consent("alerts")
	e.consent("billing")
	c := e.client()
	if _, err := c.Token(e.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	e.fake.RevokeAll()
	if _, err := c.ForceRefresh(e.ctx, "billing"); err == nil {
		t.Fatal("revoked account refreshed")
	}
	rep, err := c.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Instance != svc.Instance() || len(rep.Accounts) != 2 {
		t.Fatalf("status: %+v", rep)
	}
	a, b := rep.Accounts[0], rep.Accounts[1]
	if a.Account != "alerts" || a.State != "healthy" || a.LastError != "" || !a.Expiry.Equal(e.record("alerts").Expiry) || a.KeyID == "" {
		t.Fatalf("alerts: %+v", a)
	}
	if b.Account != "billing" || b.State != "needs_consent" || len(b.ErrorCodes) != 1 || b.ErrorCodes[0] != 50173 ||
		!strings.Contains(b.LastError, "AADSTS50173") || !strings.Contains(b.Remedy, "authtool login --account billing") {
		t.Fatalf("billing: %+v", b)
	}
	raw, _ := json.Marshal(rep)
	e.secrets.Check(t, "token.status", raw)
	if e.secrets.Len() < 4 {
		t.Fatalf("secret scan saw only %d secrets", e.secrets.Len())
	}
}

func TestRefresherFollowsTheRegistry(t *testing.T) {
	e := newEnv(t)
	_, reg := e.replica("r1")
	// Registered after the service started: found by the KV watch.
	e.consent("late")
	exp := e.record("late").Expiry
	e.eventually("the gauges of the new account", func() bool {
		return tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "late", "state": "healthy"}) == 1 &&
			tokentest.Metric(t, reg, "relay_token_expiry_timestamp_seconds", map[string]string{"account": "late"}) == float64(exp.Unix())
	})
	// The refresher is parked on the account's due time, inside the margin.
	due, err := e.clock.WaitTimer(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if due.Before(exp.Add(-5*time.Minute)) || !due.Before(exp.Add(-4*time.Minute)) {
		t.Fatalf("due %v for expiry %v: want within [expiry-5m, expiry-4m)", due, exp)
	}
	e.clock.Set(due)
	e.eventually("the proactive refresh", func() bool {
		return e.record("late").Expiry.After(exp) &&
			tokentest.Metric(t, reg, "relay_token_refresh_total", map[string]string{"account": "late", "result": "ok"}) == 1
	})

	// Removed: series gone, no more refreshes.
	if err := e.reg.Delete(e.ctx, "late"); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Delete(e.ctx, "late"); err != nil {
		t.Fatal(err)
	}
	e.eventually("the account's series to go", func() bool {
		return tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "late"}) == -1 && len(e.clock.Pending()) == 0
	})
	e.clock.Advance(48 * time.Hour)
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refreshes, want 1 (none after removal)", n)
	}
}

// TestShortLivedTokensRefreshAtHalfTheirLife: an identity platform whose
// access tokens live less than twice the refresh margin (Keycloak's live
// 5 minutes by default, the margin's default too) gets each token
// refreshed at half its life, once, and token.get answers from the store
// in between; with the margin alone every token would be inside it as
// soon as issued, and the refresher would refresh again at once, without
// end.
func TestShortLivedTokensRefreshAtHalfTheirLife(t *testing.T) {
	e := newEnvAccessTTL(t, 4*time.Minute)
	_, reg := e.replica("r1")
	e.consent("alerts")
	c := e.client()
	rec := e.record("alerts")
	for i := range 3 {
		now := e.clock.Now()
		due, err := e.clock.WaitTimer(e.ctx, func(d time.Time) bool { return d.After(now) })
		if err != nil {
			t.Fatal(err)
		}
		half := rec.Expiry.Sub(rec.LastRefresh) / 2
		if due.Before(rec.Expiry.Add(-half)) || due.After(rec.Expiry.Add(-half*4/5)) {
			t.Fatalf("refresh %d due %v for a token from %v to %v: want at half its life (jitter a fifth of that)", i+1, due, rec.LastRefresh, rec.Expiry)
		}
		if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != i {
			t.Fatalf("%d refreshes before refresh %d was due; want %d", n, i+1, i)
		}
		if tok, err := c.Token(e.ctx, "alerts"); err != nil || tok.Token != rec.AccessToken {
			t.Fatalf("token.get before the refresh: %v, %v; want the stored token", tok, err)
		}
		e.clock.Set(due)
		e.eventually("the proactive refresh", func() bool {
			return tokentest.Metric(t, reg, "relay_token_refresh_total", map[string]string{"account": "alerts", "result": "ok"}) == float64(i+1)
		})
		rec = e.record("alerts")
	}
	if n := e.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 3 {
		t.Fatalf("%d refreshes; want 3", n)
	}
}

func TestIdentityCallsTimeOut(t *testing.T) {
	e := newEnv(t)
	// The timeout ends the hanging call; the retry must beat it, so it is
	// long enough for -race on busy cores.
	_, reg := e.replicaWith(Config{Instance: "r1", HTTPClient: &http.Client{Timeout: 2 * time.Second}})
	e.consent("alerts")
	old := e.record("alerts")
	e.fake.HangNextTokenCalls(1, time.Minute) // an identity platform that does not answer

	due, err := e.clock.WaitTimer(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Set(due)
	e.eventually("the timed-out attempt to be recorded", func() bool { return e.record("alerts").FailCount == 1 })
	rec := e.record("alerts")
	if rec.State != token.StateHealthy || rec.AccessToken != old.AccessToken || !strings.Contains(rec.LastError, "timeout") {
		t.Fatalf("after a timeout: %v last_error=%q", rec, rec.LastError)
	}
	// The failure is counted after its record was written: wait for it.
	e.eventually("the timed-out attempt to be counted", func() bool {
		return tokentest.Metric(t, reg, "relay_token_refresh_total", map[string]string{"account": "alerts", "result": "transient"}) >= 1
	})
	if got := tokentest.Metric(t, reg, "relay_token_refresh_total", map[string]string{"account": "alerts", "result": "transient"}); got != 1 {
		t.Fatalf("transient count %v", got)
	}
	// The abandoned request never spent the refresh token: the retry works
	// in strict rotation mode. The refresher arms its timer for the retry
	// after it wrote the failure, concurrently with the waits above: wait
	// until it is parked on next_attempt, else the step is lost on it.
	if _, err := e.clock.WaitTimer(e.ctx, func(d time.Time) bool { return d.Equal(rec.NextAttempt) }); err != nil {
		t.Fatal("the refresher never parked on next_attempt:", err)
	}
	e.clock.Set(rec.NextAttempt)
	e.eventually("the retry", func() bool { return e.record("alerts").AccessToken != old.AccessToken })
	if r := e.fake.RefreshReuses(); r != 0 {
		t.Fatalf("%d reused refresh tokens", r)
	}
}

// A record that does not open (sealed with another key file, or
// rewritten) has a state of its own on relay_token_state, unreadable, so
// RelayTokenRecordUnreadable can fire; before, every state was 0 and a
// restarted replica exported no series for the account at all.
func TestUnreadableRecordHasAState(t *testing.T) {
	e := newEnv(t)
	e.consent("sealed")
	kv, err := e.nats.JS.KeyValue(e.ctx, token.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(e.ctx, "sealed", []byte("not a sealed record")); err != nil {
		t.Fatal(err)
	}
	_, reg := e.replica("r1") // started after: the record is unreadable from the first
	e.eventually("state unreadable", func() bool {
		return tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "sealed", "state": "unreadable"}) == 1 &&
			tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "sealed", "state": "healthy"}) == 0
	})
	e.consent("sealed") // a consent stores a record that opens
	e.eventually("state healthy again", func() bool {
		return tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "sealed", "state": "unreadable"}) == 0 &&
			tokentest.Metric(t, reg, "relay_token_state", map[string]string{"account": "sealed", "state": "healthy"}) == 1
	})
}
