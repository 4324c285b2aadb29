package token

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/testutil"
)

// fakeIdP is a minimal Microsoft identity platform token endpoint:
// rotating refresh tokens, call counting, switchable errors.
type fakeIdP struct {
	srv          *httptest.Server
	clientSecret string

	calls atomic.Int64
	mode  atomic.Value // string: "ok", "503", "50173", "7000215"

	mu        sync.Mutex
	n         int
	issued    map[string]bool // refresh tokens handed out
	used      map[string]int  // refresh token -> times presented
	reuse     int             // refresh tokens presented more than once
	scopes    []string        // scope parameter of each refresh request
	lastAT    string
	gate      chan struct{} // when set, requests wait for it to close
	entered   chan struct{} // receives once per request when gate is set
	clientIDs map[string]int
}

func newFakeIdP(t *testing.T) *fakeIdP {
	f := &fakeIdP{clientSecret: "CS-SECRET-client-secret", issued: map[string]bool{}, used: map[string]int{}, clientIDs: map[string]int{}}
	f.mode.Store("ok")
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIdP) tokenURL() string { return f.srv.URL + "/contoso/oauth2/v2.0/token" }

// issueRT registers a refresh token as if a consent had produced it.
func (f *fakeIdP) issueRT() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	rt := fmt.Sprintf("RT-SECRET-%d", f.n)
	f.issued[rt] = true
	return rt
}

func (f *fakeIdP) setGate() (entered <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
	f.entered = make(chan struct{}, 100)
	g := f.gate
	return f.entered, func() { close(g) }
}

func writeErr(w http.ResponseWriter, status int, errName string, code int) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error":             errName,
		"error_description": fmt.Sprintf("AADSTS%d: descriptive text.", code),
		"error_codes":       []int{code},
		"trace_id":          "trace-123",
		"correlation_id":    "corr-456",
	})
}

func (f *fakeIdP) serve(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	f.mu.Lock()
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", 400)
		return
	}
	f.mu.Lock()
	f.clientIDs[r.PostForm.Get("client_id")]++
	f.mu.Unlock()
	switch f.mode.Load().(string) {
	case "503":
		w.Header().Set("Retry-After", "7")
		writeErr(w, 503, "temporarily_unavailable", 50033)
		return
	case "50173":
		writeErr(w, 400, "invalid_grant", 50173)
		return
	case "7000215":
		writeErr(w, 401, "invalid_client", 7000215)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599}
	switch r.PostForm.Get("grant_type") {
	case "refresh_token":
		rt := r.PostForm.Get("refresh_token")
		f.used[rt]++
		if f.used[rt] > 1 {
			f.reuse++
		}
		f.scopes = append(f.scopes, r.PostForm.Get("scope"))
		if !f.issued[rt] {
			f.mu.Unlock()
			writeErr(w, 400, "invalid_grant", 70000)
			f.mu.Lock()
			return
		}
		f.n++
		newRT := fmt.Sprintf("RT-SECRET-%d", f.n)
		f.issued[newRT] = true
		resp["refresh_token"] = newRT
		resp["scope"] = "https://outlook.office.com/SMTP.Send"
	case "client_credentials":
		if r.PostForm.Get("client_secret") != f.clientSecret {
			f.mu.Unlock()
			writeErr(w, 401, "invalid_client", 7000215)
			f.mu.Lock()
			return
		}
		f.n++
	default:
		f.mu.Unlock()
		writeErr(w, 400, "unsupported_grant_type", 70003)
		f.mu.Lock()
		return
	}
	f.lastAT = fmt.Sprintf("AT-SECRET-%d", f.n)
	resp["access_token"] = f.lastAT
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (f *fakeIdP) snapshot() (reuse int, lastAT string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reuse, f.lastAT
}

// newClock is a settable clock shared by Sources in a test.
func newClock() *clock.Fake { return clock.NewFake(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)) }

// env is one "process": its own NATS connection, registry, store, source.
type env struct {
	js    jetstream.JetStream
	reg   *account.Registry
	store *Store
	src   *Source
}

type harness struct {
	t     *testing.T
	ctx   context.Context
	idp   *fakeIdP
	clock *clock.Fake
	logs  *testutil.Buffer
	keys  *Keyring
	url   string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, ctx: testCtx(t), idp: newFakeIdP(t), clock: newClock(), logs: &testutil.Buffer{}, keys: testKeyring(t, "k1")}
	h.url = startServer(t)
	t.Cleanup(func() { h.assertNoSecretsLogged() })
	return h
}

func (h *harness) assertNoSecretsLogged() {
	h.t.Helper()
	if out := h.logs.String(); strings.Contains(out, "SECRET") {
		h.t.Errorf("log output contains a token or secret:\n%s", out)
	}
}

// process opens a new NATS connection and a Source on it, on the
// harness's clock.
func (h *harness) process() *env {
	h.t.Helper()
	return h.processWith(SourceConfig{Now: h.clock.Now})
}

// processWith is process with cfg's clock and lease settings: it opens
// the connection, the registry and the store, and fills in the rest.
func (h *harness) processWith(cfg SourceConfig) *env {
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
	cfg.Store, cfg.Accounts = st, reg
	cfg.Log = zerolog.New(h.logs).Level(zerolog.DebugLevel)
	cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	return &env{js: js, reg: reg, store: st, src: NewSource(cfg)}
}

// consent registers a delegated (or app-only) account and stores tokens as
// authtool would, with an access token expiring at exp.
func (h *harness) consent(e *env, alias string, appOnly bool, exp time.Time) Record {
	h.t.Helper()
	acct := account.Account{Alias: alias, Mailbox: alias + "@contoso.com", Tenant: "contoso", ClientID: "client-" + alias, AppOnly: appOnly, TokenURL: h.idp.tokenURL()}
	if err := e.reg.Put(h.ctx, acct); err != nil {
		h.t.Fatal(err)
	}
	acct.Normalize()
	rec := Record{Account: alias, AccessToken: "AT-SECRET-consent-" + alias, Expiry: exp, Scopes: acct.Scopes,
		// An hour's life, as Entra issues, so that exp decides where the
		// token stands against the margin (EffectiveMargin).
		TokenURL: h.idp.tokenURL(), LastRefresh: exp.Add(-time.Hour), State: StateHealthy}
	if appOnly {
		rec.ClientSecret = h.idp.clientSecret
	} else {
		rec.RefreshToken = h.idp.issueRT()
	}
	if _, err := e.store.Put(h.ctx, rec); err != nil {
		h.t.Fatal(err)
	}
	return rec
}

func TestTokenValidNoRefresh(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	rec := h.consent(p, "alerts", false, h.clock.Now().Add(time.Hour))
	tok, err := p.src.Token(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token != rec.AccessToken || tok.Mailbox != "alerts@contoso.com" || !tok.Expiry.Equal(rec.Expiry) {
		t.Fatalf("token = %v", tok)
	}
	if n := h.idp.calls.Load(); n != 0 {
		t.Fatalf("identity calls = %d, want 0", n)
	}
	if _, err := p.src.Token(h.ctx, "ghost"); !errors.Is(err, account.ErrNotFound) {
		t.Fatalf("unknown account: %v", err)
	}
	// Registered but no tokens stored.
	if err := p.reg.Put(h.ctx, account.Account{Alias: "bare", Mailbox: "bare@contoso.com", Tenant: "contoso", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.Token(h.ctx, "bare"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no tokens: %v", err)
	}
}

func TestAccessTokenRedacted(t *testing.T) {
	tok := AccessToken{Token: "AT-SECRET-xyz", Expiry: time.Now(), Mailbox: "a@contoso.com"}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		out := fmt.Sprintf(f, tok)
		if strings.Contains(out, "SECRET") || strings.Contains(out, fmt.Sprintf("%x", "AT-SECRET")) {
			t.Errorf("%s prints the token: %s", f, out)
		}
	}
	for _, out := range []string{fmt.Sprint(tok), fmt.Sprint(&tok), fmt.Sprintf("%v", []AccessToken{tok}), fmt.Sprintf("%+v", struct{ T AccessToken }{tok}), tok.String()} {
		if strings.Contains(out, "SECRET") || !strings.Contains(out, "a@contoso.com") {
			t.Errorf("bad redaction: %s", out)
		}
	}
	var buf bytes.Buffer
	zl := zerolog.New(&buf)
	zl.Info().Object("token", tok).Interface("any", tok).Msg("x")
	if strings.Contains(buf.String(), "SECRET") || !strings.Contains(buf.String(), "a@contoso.com") {
		t.Errorf("zerolog object: %s", buf.String())
	}
}

func TestConcurrentTokenAtExpirySingleRefresh(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	old := h.consent(p, "alerts", false, h.clock.Now().Add(time.Minute)) // inside the 5m margin
	entered, release := h.idp.setGate()

	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	toks := make([]AccessToken, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			toks[i], errs[i] = p.src.Token(h.ctx, "alerts")
		}()
	}
	close(start)
	<-entered // the one refresh reached the identity platform
	release()
	wg.Wait()

	if c := h.idp.calls.Load(); c != 1 {
		t.Fatalf("identity calls = %d, want exactly 1", c)
	}
	_, lastAT := h.idp.snapshot()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if toks[i].Token != lastAT {
			t.Fatalf("caller %d got %v, want the refreshed token", i, toks[i])
		}
	}
	rec, _, err := p.store.Get(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if rec.RefreshToken == old.RefreshToken || !strings.HasPrefix(rec.RefreshToken, "RT-SECRET-") {
		t.Fatalf("rotated refresh token not persisted: %v", rec)
	}
	if rec.AccessToken != lastAT || rec.State != StateHealthy || rec.LeaseOwner != "" || !rec.LastRefresh.Equal(h.clock.Now()) {
		t.Fatalf("record after refresh: %v lease=%q", rec, rec.LeaseOwner)
	}
	if want := h.clock.Now().Add(3599 * time.Second); !rec.Expiry.Equal(want) {
		t.Fatalf("expiry %v, want %v", rec.Expiry, want)
	}
	// Scope is sent on refresh (Microsoft wants it; x/oauth2 does not add it).
	h.idp.mu.Lock()
	sc := h.idp.scopes
	h.idp.mu.Unlock()
	if len(sc) != 1 || sc[0] != "https://outlook.office.com/SMTP.Send offline_access" {
		t.Fatalf("refresh scope = %q", sc)
	}
	// Next call: valid token, no identity call.
	if _, err := p.src.Token(h.ctx, "alerts"); err != nil || h.idp.calls.Load() != 1 {
		t.Fatalf("after refresh: %v calls=%d", err, h.idp.calls.Load())
	}
	// Refresh tokens keep rotating across refreshes.
	h.clock.Advance(time.Hour)
	if _, err := p.src.Token(h.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	rec2, _, _ := p.store.Get(h.ctx, "alerts")
	if rec2.RefreshToken == rec.RefreshToken {
		t.Fatal("second refresh did not store the new refresh token")
	}
	if reuse, _ := h.idp.snapshot(); reuse != 0 {
		t.Fatalf("a refresh token was used %d extra times", reuse)
	}
}

func TestTwoProcessesNeverReuseRefreshToken(t *testing.T) {
	h := newHarness(t)
	a, b := h.process(), h.process()
	h.consent(a, "alerts", false, h.clock.Now().Add(-time.Second)) // already expired

	const rounds, perProcess = 6, 15
	for round := 1; round <= rounds; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		var mu sync.Mutex
		var got []AccessToken
		var errs []error
		for _, p := range []*env{a, b} {
			for range perProcess {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					tok, err := p.src.Token(h.ctx, "alerts")
					mu.Lock()
					got, errs = append(got, tok), append(errs, err)
					mu.Unlock()
				}()
			}
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		reuse, lastAT := h.idp.snapshot()
		if reuse != 0 {
			t.Fatalf("round %d: a refresh token reached the identity platform twice (%d)", round, reuse)
		}
		if c := h.idp.calls.Load(); c != int64(round) {
			t.Fatalf("round %d: identity calls = %d, want %d", round, c, round)
		}
		for _, tok := range got {
			if tok.Token != lastAT {
				t.Fatalf("round %d: got %v, want the newest token", round, tok)
			}
		}
		h.clock.Advance(time.Hour) // everything expires again
	}
}

func TestCASLoserUsesWinnersToken(t *testing.T) {
	// Process A holds an expired lease and refreshes late; meanwhile B has
	// taken over and stored a fresh token. A's write loses and A must use
	// the stored token instead of overwriting it.
	h := newHarness(t)
	a, b := h.process(), h.process()
	h.consent(a, "alerts", false, h.clock.Now().Add(-time.Second))
	entered, release := h.idp.setGate()

	resA := make(chan error, 1)
	var tokA AccessToken
	go func() {
		var err error
		tokA, err = a.src.Token(h.ctx, "alerts")
		resA <- err
	}()
	<-entered // A's request is at the identity platform, lease held
	// B reads the lease as it is taken (a token service watches every
	// record): a lease ends for B a TTL after B first read it
	// (Source.LeaseEnd).
	if rec, _, err := b.store.Get(h.ctx, "alerts"); err != nil || rec.LeaseOwner == "" {
		t.Fatalf("A's lease: %v %v", rec, err)
	}
	h.idp.mu.Lock()
	h.idp.gate = nil // let B through at once
	h.idp.mu.Unlock()
	h.clock.Advance(2 * time.Minute) // A's lease (60s) has expired
	tokB, err := b.src.Token(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-resA; err != nil {
		t.Fatal(err)
	}
	if tokA.Token != tokB.Token {
		t.Fatalf("A returned %v, B stored %v", tokA, tokB)
	}
	rec, _, _ := a.store.Get(h.ctx, "alerts")
	if rec.AccessToken != tokB.Token {
		t.Fatal("A overwrote B's newer record")
	}
	if !strings.Contains(h.logs.String(), "refreshed concurrently elsewhere") {
		t.Fatalf("expected conflict path in logs:\n%s", h.logs.String())
	}
}

func TestTransientFailureKeepsHealthyWhileTokenValid(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	rec := h.consent(p, "alerts", false, h.clock.Now().Add(2*time.Minute)) // valid, within margin
	h.idp.mode.Store("503")

	tok, err := p.src.Token(h.ctx, "alerts")
	if err != nil || tok.Token != rec.AccessToken {
		t.Fatalf("transient with valid token: %v, %v", tok, err)
	}
	if c := h.idp.calls.Load(); c != 1 {
		t.Fatalf("calls = %d", c)
	}
	got, _, _ := p.store.Get(h.ctx, "alerts")
	if got.State != StateHealthy || got.FailCount != 1 || got.RefreshToken != rec.RefreshToken {
		t.Fatalf("state after transient failure: %v", got)
	}
	if !strings.Contains(got.LastError, "temporarily_unavailable AADSTS50033 HTTP 503 (transient)") {
		t.Fatalf("last_error = %q", got.LastError)
	}
	if got.NextAttempt.Before(h.clock.Now().Add(7 * time.Second)) {
		t.Fatalf("next attempt %v ignores Retry-After 7s", got.NextAttempt)
	}
	// Within the backoff: no new identity call, old token still served.
	if tok, err := p.src.Token(h.ctx, "alerts"); err != nil || tok.Token != rec.AccessToken || h.idp.calls.Load() != 1 {
		t.Fatalf("during backoff: %v %v calls=%d", tok, err, h.idp.calls.Load())
	}

	// Token expires, identity still down: state transient, typed error.
	h.clock.Advance(3 * time.Minute)
	_, err = p.src.Token(h.ctx, "alerts")
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.Class != StateTransient || ie.RetryAfter < 7*time.Second || h.idp.calls.Load() != 2 {
		t.Fatalf("expired + 503: %v calls=%d", err, h.idp.calls.Load())
	}
	got, _, _ = p.store.Get(h.ctx, "alerts")
	if got.State != StateTransient || got.FailCount != 2 {
		t.Fatalf("state: %v", got)
	}
	// Still backing off: error from the record, no call.
	h.idp.mode.Store("ok")
	if _, err := p.src.Token(h.ctx, "alerts"); !errors.As(err, &ie) || ie.Class != StateTransient || h.idp.calls.Load() != 2 {
		t.Fatalf("backoff: %v calls=%d", err, h.idp.calls.Load())
	}
	// After the backoff: recovers.
	h.clock.Advance(time.Minute)
	tok, err = p.src.Token(h.ctx, "alerts")
	if err != nil || tok.Token == rec.AccessToken || h.idp.calls.Load() != 3 {
		t.Fatalf("recovery: %v %v calls=%d", tok, err, h.idp.calls.Load())
	}
	got, _, _ = p.store.Get(h.ctx, "alerts")
	if got.State != StateHealthy || got.FailCount != 0 || got.LastError != "" || !got.NextAttempt.IsZero() {
		t.Fatalf("after recovery: %v last_error=%q", got, got.LastError)
	}
}

func TestNeedsConsentStopsIdentityCalls(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	h.idp.mode.Store("50173")

	_, err := p.src.Token(h.ctx, "alerts")
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.Class != StateNeedsConsent {
		t.Fatalf("50173: %v", err)
	}
	if want := "identity platform: invalid_grant AADSTS50173 (needs_consent): "; !strings.HasPrefix(err.Error(), want) ||
		!strings.Contains(err.Error(), "run: authtool login --account alerts") {
		t.Fatalf("message: %v", err)
	}
	if ie.TraceID != "trace-123" {
		t.Fatalf("trace id not kept: %q", ie.TraceID)
	}
	rec, _, _ := p.store.Get(h.ctx, "alerts")
	if rec.State != StateNeedsConsent || rec.LastError != err.Error() || rec.FailCount != 1 || rec.LeaseOwner != "" {
		t.Fatalf("record: %v last_error=%q", rec, rec.LastError)
	}
	if strings.Contains(rec.LastError, "descriptive text") {
		t.Fatal("description text stored")
	}

	h.idp.mode.Store("ok") // even if the platform would answer now
	other := h.process()
	for _, call := range []func() error{
		func() error { _, err := p.src.Token(h.ctx, "alerts"); return err },
		func() error { _, err := p.src.ForceRefresh(h.ctx, "alerts"); return err },
		func() error { _, err := other.src.Token(h.ctx, "alerts"); return err },
	} {
		err := call()
		if !errors.As(err, &ie) || ie.Class != StateNeedsConsent || !strings.Contains(err.Error(), "AADSTS50173") {
			t.Fatalf("blocked account: %v", err)
		}
	}
	if c := h.idp.calls.Load(); c != 1 {
		t.Fatalf("identity calls = %d, want 1", c)
	}

	// A new consent unblocks.
	h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	if _, err := p.src.Token(h.ctx, "alerts"); err != nil || h.idp.calls.Load() != 2 {
		t.Fatalf("after consent: %v calls=%d", err, h.idp.calls.Load())
	}
}

func TestForceRefresh(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	rec := h.consent(p, "alerts", false, h.clock.Now().Add(time.Hour))
	tok, err := p.src.ForceRefresh(h.ctx, "alerts")
	if err != nil || tok.Token == rec.AccessToken || h.idp.calls.Load() != 1 {
		t.Fatalf("ForceRefresh: %v %v calls=%d", tok, err, h.idp.calls.Load())
	}
	// Transient failure on a forced refresh is reported (the token was rejected).
	h.idp.mode.Store("503")
	if _, err := p.src.ForceRefresh(h.ctx, "alerts"); err == nil {
		t.Fatal("forced refresh hid a failure")
	}
	got, _, _ := p.store.Get(h.ctx, "alerts")
	if got.State != StateHealthy || got.FailCount != 1 || got.AccessToken != tok.Token {
		t.Fatalf("after failed force: %v", got)
	}
	// Token() still serves the valid token meanwhile.
	if t2, err := p.src.Token(h.ctx, "alerts"); err != nil || t2.Token != tok.Token {
		t.Fatalf("Token after failed force: %v %v", t2, err)
	}
}

func TestAppOnlyAndConfigError(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	h.consent(p, "billing", true, h.clock.Now().Add(-time.Minute))
	tok, err := p.src.Token(h.ctx, "billing")
	if err != nil || !strings.HasPrefix(tok.Token, "AT-SECRET-") || tok.Mailbox != "billing@contoso.com" {
		t.Fatalf("app-only token: %v %v", tok, err)
	}
	h.idp.mu.Lock()
	ids := h.idp.clientIDs["client-billing"]
	h.idp.mu.Unlock()
	if ids != 1 {
		t.Fatalf("client_id not sent in params: %v", h.idp.clientIDs)
	}
	rec, _, _ := p.store.Get(h.ctx, "billing")
	if rec.ClientSecret != h.idp.clientSecret || rec.RefreshToken != "" || !rec.Expiry.Equal(h.clock.Now().Add(3599*time.Second)) {
		t.Fatalf("app-only record: %v", rec)
	}

	h.idp.mode.Store("7000215")
	_, err = p.src.ForceRefresh(h.ctx, "billing")
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.Class != StateConfigError ||
		!strings.Contains(err.Error(), "client secret is wrong or expired: create a new secret in Entra and run: authtool app --account billing") {
		t.Fatalf("7000215: %v", err)
	}
	calls := h.idp.calls.Load()
	if _, err := p.src.Token(h.ctx, "billing"); !errors.As(err, &ie) || ie.Class != StateConfigError || h.idp.calls.Load() != calls {
		t.Fatalf("config_error not sticky: %v", err)
	}
	rec, _, _ = p.store.Get(h.ctx, "billing")
	if rec.State != StateConfigError {
		t.Fatalf("state %s", rec.State)
	}
}

func TestRefreshReadsOldKeyAndReseals(t *testing.T) {
	h := newHarness(t)
	oldKey := NamedKey{ID: "old", Key: randKey(t)}
	h.keys, _ = NewKeyring(oldKey)
	p := h.process()
	h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	// Rotate: a process with the new key first and the old one kept.
	h.keys, _ = NewKeyring(NamedKey{ID: "new", Key: randKey(t)}, oldKey)
	q := h.process()
	if _, err := q.src.Token(h.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	raw, _ := q.store.RawGet(h.ctx, "alerts")
	if id, _ := SealedKeyID(raw); id != "new" {
		t.Fatalf("after refresh sealed with %q", id)
	}
}

func TestAccountProxy(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", 400)
			return
		}
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), r.Body)
		out.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		_, _ = w.Write(b.Bytes())
	}))
	t.Cleanup(proxy.Close)
	h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	acct, _ := p.reg.Get(h.ctx, "alerts")
	u, _ := url.Parse(proxy.URL)
	u.User = url.UserPassword("proxyuser", "PROXY-SECRET")
	acct.ProxyURL = u.String()
	// The account record as an earlier version wrote it, credentials in
	// proxy_url (Registry.Put refuses them now), and a token record
	// without a binding: the first use seals the proxy with the tokens.
	b, _ := json.Marshal(acct)
	kv, err := p.js.KeyValue(h.ctx, account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(h.ctx, "alerts", b); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.Token(h.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if rec, _, err := p.store.Get(h.ctx, "alerts"); err != nil || rec.ProxyURL != acct.ProxyURL {
		t.Fatalf("the account's proxy URL was not sealed with the tokens (%v)", err)
	}
	if proxied.Load() != 1 || h.idp.calls.Load() != 1 {
		t.Fatalf("proxied=%d idp=%d", proxied.Load(), h.idp.calls.Load())
	}
}

func TestLogsCarryNoSecrets(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	h.consent(p, "billing", true, h.clock.Now().Add(-time.Minute))
	for _, mode := range []string{"ok", "503"} {
		h.idp.mode.Store(mode)
		h.clock.Advance(2 * time.Hour)
		_, _ = p.src.Token(h.ctx, "alerts")
		_, _ = p.src.ForceRefresh(h.ctx, "billing")
	}
	h.clock.Advance(2 * time.Hour)
	h.idp.mode.Store("50173")
	_, _ = p.src.Token(h.ctx, "alerts")
	h.idp.mode.Store("7000215")
	_, _ = p.src.ForceRefresh(h.ctx, "billing")
	out := h.logs.String()
	for _, want := range []string{"token refreshed", "token refresh failed", `"account":"alerts"`, `"class":"needs_consent"`, `"class":"config_error"`, `"class":"transient"`, "AADSTS"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q", want)
		}
	}
	for _, leak := range []string{"SECRET", "descriptive text", h.idp.clientSecret} {
		if strings.Contains(out, leak) {
			t.Errorf("logs contain %q:\n%s", leak, out)
		}
	}
	// Errors returned to callers carry no secrets either.
	_, err := p.src.Token(h.ctx, "alerts")
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("error: %v", err)
	}
}

// closeOnBody runs onClose when the response body is closed, i.e. once the
// token endpoint's answer has been read.
type closeOnBody struct {
	base    http.RoundTripper
	onClose func()
}

func (c closeOnBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		resp.Body = &hookBody{ReadCloser: resp.Body, onClose: c.onClose}
	}
	return resp, err
}

type hookBody struct {
	io.ReadCloser
	onClose func()
}

func (b *hookBody) Close() error {
	err := b.ReadCloser.Close()
	b.onClose()
	return err
}

func TestCloseAfterTheAnswerStillStoresTheRotatedToken(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	old := h.consent(p, "alerts", false, h.clock.Now().Add(-time.Minute))
	var src *Source
	src = NewSource(SourceConfig{
		Store: p.store, Accounts: p.reg, Now: h.clock.Now, Log: zerolog.New(h.logs),
		HTTPClient: &http.Client{Transport: closeOnBody{base: http.DefaultTransport, onClose: func() { src.Close() }}},
	})
	tok, err := src.Token(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	rec, _, _ := p.store.Get(h.ctx, "alerts")
	if rec.RefreshToken == old.RefreshToken || rec.AccessToken != tok.Token || rec.LeaseOwner != "" {
		t.Fatalf("stopping after the answer lost the rotated refresh token: %v", rec)
	}
	// Closed: no more refreshes.
	h.clock.Advance(2 * time.Hour)
	if _, err := src.Token(h.ctx, "alerts"); err == nil || h.idp.calls.Load() != 1 {
		t.Fatalf("a closed Source refreshed: %v calls=%d", err, h.idp.calls.Load())
	}
}

func TestEffectiveMargin(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		life time.Duration // Expiry - LastRefresh; 0 = LastRefresh unknown
		want time.Duration
	}{
		{"entra hour", time.Hour, 5 * time.Minute},
		{"exactly twice the margin", 10 * time.Minute, 5 * time.Minute},
		{"keycloak five minutes", 5 * time.Minute, 150 * time.Second},
		{"one minute", time.Minute, 30 * time.Second},
		{"last refresh unknown", 0, 5 * time.Minute},
	} {
		rec := Record{Expiry: t0.Add(tc.life)}
		if tc.life != 0 {
			rec.LastRefresh = t0
		}
		if got := EffectiveMargin(5*time.Minute, rec); got != tc.want {
			t.Errorf("%s: margin = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMarkSMTPRefusedShowsNeedsConsentForThatTokenOnly(t *testing.T) {
	// Office 365 refused the current token after a forced refresh: the
	// record shows needs_consent (EffectiveState, Problem) while still
	// handing the token out; a stale report (a newer token exists) and a
	// second report of the same token change nothing; the next refresh,
	// or ClearSMTPRefused, ends it.
	h := newHarness(t)
	p := h.process()
	h.consent(p, "alerts", false, h.clock.Now().Add(time.Hour))
	tok, err := p.src.ForceRefresh(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	var outcomes []Outcome
	p.src.observe = func(o Outcome) { outcomes = append(outcomes, o) }
	if marked, err := p.src.MarkSMTPRefused(h.ctx, "alerts", tok.Issued.Add(-time.Second)); err != nil || marked {
		t.Fatalf("a stale report marked the record: %v %v", marked, err)
	}
	if marked, err := p.src.MarkSMTPRefused(h.ctx, "alerts", tok.Issued); err != nil || !marked {
		t.Fatalf("MarkSMTPRefused: %v %v", marked, err)
	}
	if marked, _ := p.src.MarkSMTPRefused(h.ctx, "alerts", tok.Issued); marked {
		t.Fatal("the same token marked twice")
	}
	rec, _, _ := p.store.Get(h.ctx, "alerts")
	acct, _ := p.reg.Get(h.ctx, "alerts")
	if rec.State != StateHealthy || rec.EffectiveState() != StateNeedsConsent {
		t.Fatalf("state %s, effective %s: want healthy stored, needs_consent shown", rec.State, rec.EffectiveState())
	}
	if pr := rec.Problem(acct, h.clock.Now()); pr == nil || pr.Err != ErrSMTPRefused || !strings.Contains(pr.Remedy, "authtool login --account alerts") {
		t.Fatalf("problem %v", pr)
	}
	if len(outcomes) != 1 || !outcomes[0].SMTPRefused || outcomes[0].From != StateHealthy || outcomes[0].To != StateNeedsConsent {
		t.Fatalf("outcomes %+v", outcomes)
	}
	if got, err := p.src.Token(h.ctx, "alerts"); err != nil || got.Token != tok.Token {
		t.Fatalf("Token while marked: %v %v, want the token still handed out", got, err)
	}
	if cleared, err := p.src.ClearSMTPRefused(h.ctx, "alerts", tok.Issued); err != nil || !cleared {
		t.Fatalf("ClearSMTPRefused: %v %v", cleared, err)
	}
	if rec, _, _ := p.store.Get(h.ctx, "alerts"); rec.EffectiveState() != StateHealthy {
		t.Fatalf("effective state %s after the clear", rec.EffectiveState())
	}
	// Marked again, then a refresh: the new token is not the refused one.
	if marked, _ := p.src.MarkSMTPRefused(h.ctx, "alerts", tok.Issued); !marked {
		t.Fatal("not marked again")
	}
	h.clock.Advance(time.Second)
	if _, err := p.src.ForceRefresh(h.ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if rec, _, _ := p.store.Get(h.ctx, "alerts"); rec.EffectiveState() != StateHealthy {
		t.Fatalf("effective state %s after a refresh", rec.EffectiveState())
	}
}
