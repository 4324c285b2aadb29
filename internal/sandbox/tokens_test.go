package sandbox_test

// Acceptance tests of the token service end to end: the fake
// Office 365 in strict rotation mode on a fake clock, the sandbox's
// embedded NATS and a workers-only daemon, and token service replicas as
// separate daemons with --roles tokens. Every test's logs, events,
// /status, /metrics and token.status replies are scanned for every token,
// client secret and key the store ever held.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/clock"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay"
	"relay365/internal/roles"
	"relay365/internal/sandbox"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
	"relay365/internal/token/tokentest"
	"relay365/producer"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// fastPause probes a paused account every 100-300ms instead of minutes.
var fastPause = relay.Backoff{Base: 100 * time.Millisecond, Max: 300 * time.Millisecond, Jitter: 0.2}

type tokenCluster struct {
	t       *testing.T
	ctx     context.Context
	sb      *sandbox.Sandbox
	clock   *clock.Fake
	keyFile string
	logs    *tokentest.Buffer
	secrets *tokentest.Secrets
	nc      *nats.Conn
	js      jetstream.JetStream
	p       *producer.Producer

	mu       sync.Mutex
	replicas map[string]*daemon.Daemon
	events   []tokensvc.Event
	rawEv    tokentest.Buffer
	sent     int
}

// startTokenCluster starts the sandbox as a workers-only daemon (with the
// embedded NATS, the fake and the consented account "sandbox") and n token
// service replicas r1..rn, and waits until every replica's refresher has
// scheduled the account.
func startTokenCluster(t *testing.T, n int, fc fakeo365.Config) *tokenCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	c := &tokenCluster{t: t, ctx: ctx, clock: clock.NewFake(t0), logs: &tokentest.Buffer{}, replicas: map[string]*daemon.Daemon{}}
	dir := t.TempDir()
	c.keyFile = filepath.Join(dir, "token.key")
	fc.StrictRotation, fc.PerMinute = true, -1
	var err error
	c.sb, err = sandbox.Start(ctx, sandbox.Config{
		DataDir: dir, NATSListen: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", SMTPListen: "off", SMTPSListen: "off",
		Daemon: daemon.Config{
			Roles: daemon.RoleWorkers, Clock: c.clock, Instance: "worker", NATSSync: "1s",
			Retry: fastRetry, Pause: fastPause, AckWait: 5 * time.Second, ShutdownGrace: 5 * time.Second,
		},
		Fake: fc,
	}, zerolog.New(c.logs).With().Str("process", "worker").Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	c.secrets = tokentest.Watch(t, c.sb.Daemon.Store)
	c.secrets.AddKeyFile(t, c.keyFile)
	_, c.js, c.p = connect(t, c.sb)
	// The test watches events and asks for tokens as the relay itself.
	c.nc = c.sb.Daemon.NC
	_, err = c.nc.Subscribe("relay.events.>", func(m *nats.Msg) {
		var ev tokensvc.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Kind == "" || m.Subject != "relay.events."+ev.Kind {
			t.Errorf("bad event on %s: %s", m.Subject, m.Data)
		}
		c.rawEv.Write(append(m.Data, '\n'))
		c.mu.Lock()
		c.events = append(c.events, ev)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		c.startReplica(fmt.Sprintf("r%d", i))
	}
	c.eventually("every replica to schedule the account", func() bool { return len(c.clock.Pending()) == n })
	return c
}

func (c *tokenCluster) startReplica(name string) *daemon.Daemon {
	c.t.Helper()
	d, err := daemon.Start(c.ctx, daemon.Config{
		NATSURL: c.sb.Daemon.NATSURL, NATS: c.sb.Daemon.ClientOptions(roles.Tokens), KeyFile: c.keyFile, HTTPAddr: "127.0.0.1:0", DataDir: c.t.TempDir(),
		Roles: daemon.RoleTokens, Clock: c.clock, Instance: name,
	}, zerolog.New(c.logs).With().Str("process", name).Logger())
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.replicas[name] = d
	c.mu.Unlock()
	return d
}

// stopReplica stops a replica as a crash would for its refresh in flight.
func (c *tokenCluster) stopReplica(name string) {
	c.t.Helper()
	c.mu.Lock()
	d := c.replicas[name]
	delete(c.replicas, name)
	c.mu.Unlock()
	if d == nil {
		c.t.Fatalf("no replica %q", name)
	}
	if err := d.Close(); err != nil {
		c.t.Fatal(err)
	}
}

// close scans every surface for secrets, then stops everything.
func (c *tokenCluster) close() {
	c.scan()
	c.mu.Lock()
	for _, d := range c.replicas {
		d.Close()
	}
	c.mu.Unlock()
	c.sb.Close()
	c.secrets.Check(c.t, "logs", c.logs.Bytes())
	if c.t.Failed() {
		c.t.Logf("logs:\n%s", c.logs.String())
	}
}

func (c *tokenCluster) scan() {
	c.mu.Lock()
	daemons := []*daemon.Daemon{c.sb.Daemon}
	for _, d := range c.replicas {
		daemons = append(daemons, d)
	}
	c.mu.Unlock()
	for _, d := range daemons {
		for _, path := range []string{"/status", "/metrics"} {
			c.secrets.Check(c.t, d.HTTPAddr+path, httpGet(c.t, "http://"+d.HTTPAddr+path))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if rep, err := c.sb.Daemon.TokenClient.Status(ctx); err == nil {
		b, _ := json.Marshal(rep)
		c.secrets.Check(c.t, "token.status", b)
	}
	c.secrets.Check(c.t, "events", c.rawEv.Bytes())
	// Dead letters carry the failure's reason and the server's last reply.
	dead, err := queue.ListDeadLetters(ctx, c.sb.Daemon.JS, queue.DeadLetterFilter{})
	if err != nil {
		c.t.Error(err)
	}
	for _, e := range dead {
		var b strings.Builder
		for k, vs := range e.Header {
			fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(vs, ", "))
		}
		b.Write(e.Data)
		c.secrets.Check(c.t, fmt.Sprintf("dead letter %d", e.Seq), []byte(b.String()))
	}
	if c.secrets.Len() < 3 {
		c.t.Errorf("the secret scan knows only %d secrets", c.secrets.Len())
	}
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

func (c *tokenCluster) eventually(what string, cond func() bool) {
	c.t.Helper()
	testutil.Eventually(c.t, c.ctx, what, cond)
}

func (c *tokenCluster) record(alias string) token.Record {
	c.t.Helper()
	rec, _, err := c.sb.Daemon.Store.Get(c.ctx, alias)
	if err != nil {
		c.t.Fatal(err)
	}
	return rec
}

// nextTimer waits until a refresher is parked on a future time and
// returns that time.
func (c *tokenCluster) nextTimer() time.Time {
	c.t.Helper()
	now := c.clock.Now()
	d, err := c.clock.WaitTimer(c.ctx, func(d time.Time) bool { return d.After(now) })
	if err != nil {
		c.t.Fatal("no refresher parked on a timer")
	}
	return d
}

// send publishes one message for alias with a unique subject and returns
// the subject.
func (c *tokenCluster) send(alias string) string {
	c.t.Helper()
	c.mu.Lock()
	c.sent++
	subject := fmt.Sprintf("%s message %d", alias, c.sent)
	c.mu.Unlock()
	_, err := c.p.Publish(c.ctx, &producer.Message{Account: alias, To: []string{"ops@contoso.com"}, Subject: subject, Text: "x"})
	if err != nil {
		c.t.Fatal(err)
	}
	return subject
}

func (c *tokenCluster) delivered(subjects ...string) bool {
	got := map[string]bool{}
	for _, m := range c.sb.Fake.Messages() {
		got[m.Subject] = true
	}
	for _, s := range subjects {
		if !got[s] {
			return false
		}
	}
	return true
}

func (c *tokenCluster) waitDelivered(subjects ...string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("delivery of %q", subjects), func() bool { return c.delivered(subjects...) })
}

func (c *tokenCluster) eventsOf(kind string) []tokensvc.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []tokensvc.Event
	for _, ev := range c.events {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// sum adds a series over every running replica.
func (c *tokenCluster) sum(name string, labels map[string]string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0.0
	for _, d := range c.replicas {
		if v := tokentest.Metric(c.t, d.Registry, name, labels); v > 0 {
			total += v
		}
	}
	return total
}

// refreshCount checks relay_token_refresh_total{result} summed over the
// replicas. The counter is bumped just after the record is written, so a
// test that saw the record waits for it, then checks it is exact.
func (c *tokenCluster) refreshCount(result string, want float64) {
	c.t.Helper()
	labels := map[string]string{"result": result}
	c.eventually("relay_token_refresh_total{result="+result+"}", func() bool { return c.sum("relay_token_refresh_total", labels) >= want })
	if got := c.sum("relay_token_refresh_total", labels); got != want {
		c.t.Fatalf("relay_token_refresh_total{result=%s} summed over replicas = %v, want %v", result, got, want)
	}
}

func (c *tokenCluster) replica(name string) *daemon.Daemon {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replicas[name]
}

// watchStates records every state the account's record goes through.
func (c *tokenCluster) watchStates(alias string) func() []token.State {
	ctx, cancel := context.WithCancel(c.ctx)
	c.t.Cleanup(cancel)
	updates, err := c.sb.Daemon.Store.Watch(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []token.State
	go func() {
		for u := range updates {
			if u.Account == alias && !u.Deleted && u.Err == nil {
				mu.Lock()
				seen = append(seen, u.Record.State)
				mu.Unlock()
			}
		}
	}()
	return func() []token.State {
		mu.Lock()
		defer mu.Unlock()
		return append([]token.State(nil), seen...)
	}
}

func (c *tokenCluster) streamMsgs(name string) uint64 {
	c.t.Helper()
	return queuetest.Msgs(c.t, c.ctx, c.js, name)
}

func metricOf(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	return tokentest.Metric(t, g, name, labels)
}

// ---- acceptance ------------------------------------------------------------

func TestTokenThreeReplicasFiftyRequestsOneRefresh(t *testing.T) {
	c := startTokenCluster(t, 3, fakeo365.Config{})
	old := c.record(sandbox.Account)
	// A slow identity platform keeps the refresh in flight while the 50
	// requests and three refreshers pile up behind it.
	c.sb.Fake.HangNextTokenCalls(1, 300*time.Millisecond)
	// At expiry: every caller needs a new token, and every refresher fires.
	c.clock.Set(old.Expiry.Add(time.Second))

	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	toks := make([]token.AccessToken, n)
	errs := make([]error, n)
	for i := range n {
		cl := tokensvc.NewClient(tokensvc.ClientConfig{NC: c.nc, Now: c.clock.Now}) // 50 workers: no shared cache
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			toks[i], errs[i] = cl.Token(c.ctx, sandbox.Account)
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if toks[i].Token == old.AccessToken || toks[i].Token != toks[0].Token {
			t.Fatalf("request %d got %v, want the one refreshed token", i, toks[i])
		}
	}
	if _, ok := c.sb.Fake.AccessTokenValid(toks[0].Token); !ok {
		t.Fatal("the refreshed token is not valid at the identity platform")
	}
	if got := c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken); got != 1 {
		t.Fatalf("%d refresh calls reached the identity platform, want exactly 1", got)
	}
	if got := c.sb.Fake.RefreshReuses(); got != 0 {
		t.Fatalf("strict rotation saw %d reused refresh tokens", got)
	}
	for _, name := range []string{"r1", "r2", "r3"} {
		// micro counts a request after its reply went out: wait for it.
		svc := c.replica(name).TokenService
		c.eventually("replica "+name+" to have answered a token.get (else the test did not exercise three replicas)",
			func() bool { return endpointRequests(svc, "get") >= 1 })
	}
	c.refreshCount("ok", 1)
	c.eventually("the token.refreshed event", func() bool { return len(c.eventsOf("token.refreshed")) == 1 })
	ev := c.eventsOf("token.refreshed")[0]
	if ev.Account != sandbox.Account || ev.State != "healthy" || !ev.Rotated || !ev.Expiry.Equal(toks[0].Expiry) {
		t.Fatalf("event %+v", ev)
	}
	// And mail flows with it.
	c.waitDelivered(c.send(sandbox.Account))
}

func endpointRequests(s *tokensvc.Service, name string) int {
	for _, ep := range s.Stats().Endpoints {
		if ep.Name == name {
			return ep.NumRequests
		}
	}
	return -1
}

func TestTokenRefreshingReplicaStoppedMidway(t *testing.T) {
	c := startTokenCluster(t, 3, fakeo365.Config{})
	old := c.record(sandbox.Account)
	c.waitDelivered(c.send(sandbox.Account)) // the worker has a token

	// The next refresh hangs at the identity platform until its caller
	// goes away.
	c.sb.Fake.HangNextTokenCalls(1, time.Minute)
	c.clock.Set(old.Expiry.Add(-4 * time.Minute)) // past every replica's jittered due time
	var leased token.Record
	c.eventually("a replica to hold the lease and call the identity platform", func() bool {
		leased = c.record(sandbox.Account)
		return leased.LeaseOwner != "" && c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken) == 1
	})
	holder := token.LeaseInstance(leased)
	if c.replica(holder) == nil {
		t.Fatalf("lease held by %q, not a replica", holder)
	}
	// Mail keeps flowing on the still valid token while the refresh hangs.
	c.waitDelivered(c.send(sandbox.Account))

	c.stopReplica(holder) // mid-refresh: the request is abandoned, the lease stays
	if rec := c.record(sandbox.Account); rec.LeaseOwner != leased.LeaseOwner || rec.AccessToken != old.AccessToken {
		t.Fatalf("stopping the holder changed the record: %v", rec)
	}
	// Another replica takes over when the lease ends (LeaseTTL 60s), long
	// before the token expires (margin 5m). The two survivors park on the
	// lease's end only after they read the lease (their own attempt, or
	// the lease's write waking them): wait for both, else the step is lost.
	c.eventually("both survivors to park on the lease's end", func() bool {
		n := 0
		for _, d := range c.clock.Pending() {
			if d.Equal(leased.LeaseUntil) {
				n++
			}
		}
		return n == 2
	})
	c.clock.Set(leased.LeaseUntil.Add(time.Second))
	var fresh token.Record
	c.eventually("another replica to take over", func() bool {
		fresh = c.record(sandbox.Account)
		return fresh.AccessToken != old.AccessToken && fresh.LeaseOwner == ""
	})
	if fresh.State != token.StateHealthy || !fresh.LastRefresh.Before(old.Expiry) || !fresh.Expiry.After(old.Expiry) {
		t.Fatalf("take-over result %v (old expiry %v)", fresh, old.Expiry)
	}
	if got := c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken); got != 2 {
		t.Fatalf("%d refresh calls, want 2 (the abandoned one and the take-over)", got)
	}
	if got := c.sb.Fake.RefreshReuses(); got != 0 {
		t.Fatalf("strict rotation saw %d reused refresh tokens", got)
	}
	c.refreshCount("ok", 1) // the survivors'
	// Past the old token's expiry mail goes with the new one.
	c.clock.Set(old.Expiry.Add(time.Minute))
	c.waitDelivered(c.send(sandbox.Account))
	if n := c.streamMsgs(queue.StreamDLQ); n != 0 {
		t.Fatalf("%d messages dead-lettered", n)
	}
	// The stopped replica's request really was abandoned: closing the fake
	// wakes any call still hanging, and it would now reuse the old token.
	c.sb.Fake.Close()
	if got := c.sb.Fake.RefreshReuses(); got != 0 {
		t.Fatalf("the stopped replica's refresh completed later: %d reused refresh tokens", got)
	}
}

func TestTokenTransientFailuresBackOff(t *testing.T) {
	c := startTokenCluster(t, 1, fakeo365.Config{})
	old := c.record(sandbox.Account)
	states := c.watchStates(sandbox.Account)
	c.sb.Fake.FailNextTokenCalls(5) // 503 temporarily_unavailable, Retry-After: 1

	var attempts []time.Time
	for i := 1; i <= 6; i++ {
		at := c.nextTimer()
		c.clock.Set(at)
		c.eventually(fmt.Sprintf("refresh attempt %d", i), func() bool {
			return c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken) == i
		})
		attempts = append(attempts, at)
		if i == 3 {
			// Mail flows meanwhile: the token is still valid.
			c.waitDelivered(c.send(sandbox.Account))
		}
	}
	c.eventually("the refreshed record", func() bool {
		rec := c.record(sandbox.Account)
		return rec.AccessToken != old.AccessToken && rec.FailCount == 0 && rec.LastError == ""
	})
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < time.Second {
			t.Fatalf("attempt %d came %v after the previous one: Retry-After (1s) not honoured", i+1, gap)
		}
	}
	if first, last := attempts[1].Sub(attempts[0]), attempts[5].Sub(attempts[4]); last <= first {
		t.Fatalf("backoff does not grow: first gap %v, last %v", first, last)
	}
	if !attempts[5].Before(old.Expiry) {
		t.Fatal("the retries outlived the access token")
	}
	d := c.replica("r1")
	// The refresh is counted after its record was written: wait for it.
	c.eventually("the refresh counted", func() bool {
		return metricOf(t, d.Registry, "relay_token_refresh_total", map[string]string{"account": sandbox.Account, "result": "ok"}) >= 1
	})
	for result, want := range map[string]float64{"transient": 5, "ok": 1, "needs_consent": 0, "config_error": 0} {
		if got := metricOf(t, d.Registry, "relay_token_refresh_total", map[string]string{"account": sandbox.Account, "result": result}); got != want {
			t.Fatalf("relay_token_refresh_total{result=%s} = %v, want %v", result, got, want)
		}
	}
	c.eventually("the healthy gauge", func() bool {
		return metricOf(t, d.Registry, "relay_token_state", map[string]string{"account": sandbox.Account, "state": "healthy"}) == 1
	})
	for _, s := range states() {
		if s != token.StateHealthy {
			t.Fatalf("state went %s while the access token was valid (states %v)", s, states())
		}
	}
	c.eventually("the events", func() bool {
		return len(c.eventsOf("token.refresh_failed")) == 5 && len(c.eventsOf("token.refreshed")) == 1
	})
	for _, ev := range c.eventsOf("token.refresh_failed") {
		if ev.Class != "transient" || ev.State != "healthy" || ev.HTTPStatus != 503 || ev.NextAttempt.IsZero() || ev.Remedy == "" {
			t.Fatalf("refresh_failed event %+v", ev)
		}
	}
	if n := len(c.eventsOf("account.consent_required")); n != 0 {
		t.Fatalf("%d consent_required events for transient failures", n)
	}
}

func TestTokenRevocationNeedsConsentThenReconsent(t *testing.T) {
	c := startTokenCluster(t, 2, fakeo365.Config{})
	old := c.record(sandbox.Account)
	c.waitDelivered(c.send(sandbox.Account))
	// A permanent refusal, so the secret scan at the end reads a dead
	// letter's headers too.
	c.sb.Fake.SetNextDataReply(1, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "refused for the scan"})
	c.send(sandbox.Account)
	c.eventually("a dead letter", func() bool { return c.streamMsgs(queue.StreamDLQ) == 1 })

	c.sb.Fake.RevokeAll() // password reset: invalid_grant AADSTS50173
	due := c.nextTimer()
	c.clock.Set(due)
	c.eventually("needs_consent", func() bool { return c.record(sandbox.Account).State == token.StateNeedsConsent })
	if got := c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken); got != 1 {
		t.Fatalf("%d refresh calls, want 1: needs_consent within one refresh cycle, and no retries", got)
	}
	// Loud: event, metrics, log line, /status.
	c.eventually("the consent_required event", func() bool { return len(c.eventsOf("account.consent_required")) == 1 })
	ev := c.eventsOf("account.consent_required")[0]
	if ev.Account != sandbox.Account || ev.State != "needs_consent" || ev.PrevState != "healthy" || ev.OAuthError != "invalid_grant" ||
		len(ev.ErrorCodes) != 1 || ev.ErrorCodes[0] != 50173 || !strings.Contains(ev.Remedy, "authtool login --account sandbox") {
		t.Fatalf("consent_required event %+v", ev)
	}
	if len(c.eventsOf("token.refresh_failed")) != 1 {
		t.Fatal("no refresh_failed event")
	}
	for _, name := range []string{"r1", "r2"} {
		reg := c.replica(name).Registry
		c.eventually("the needs_consent gauge on "+name, func() bool {
			return metricOf(t, reg, "relay_token_state", map[string]string{"account": sandbox.Account, "state": "needs_consent"}) == 1 &&
				metricOf(t, reg, "relay_token_state", map[string]string{"account": sandbox.Account, "state": "healthy"}) == 0
		})
	}
	c.refreshCount("needs_consent", 1)
	// observe logs the state change after it counted the refresh and
	// published the events the test waited for: wait for the line.
	c.eventually("the token state change logged", func() bool { return strings.Contains(c.logs.String(), `"to":"needs_consent"`) })
	logs := c.logs.String()
	if !strings.Contains(logs, `"message":"token state changed"`) || !strings.Contains(logs, `"error_codes":[50173]`) ||
		!strings.Contains(logs, `"to":"needs_consent"`) || !strings.Contains(logs, "authtool login --account sandbox") {
		t.Fatalf("no loud log line with the AADSTS code and remedy:\n%s", logs)
	}
	var st daemon.Status
	if err := json.Unmarshal(httpGet(t, "http://"+c.sb.Daemon.HTTPAddr+"/status"), &st); err != nil || len(st.Accounts) != 1 {
		t.Fatalf("/status: %v %+v", err, st)
	}
	if a := st.Accounts[0]; a.TokenState != "needs_consent" || !strings.Contains(a.LastError, "AADSTS50173") ||
		!strings.Contains(a.Remedy, "authtool login --account sandbox") || len(a.ErrorCodes) != 1 {
		t.Fatalf("/status account %+v", a)
	}

	// Mail for the account stays queued, never dead-lettered for it. (Past
	// the old token's expiry, so no worker holds a usable token.)
	c.clock.Set(old.Expiry.Add(time.Minute))
	before := len(c.sb.Fake.Messages())
	subjects := []string{c.send(sandbox.Account), c.send(sandbox.Account), c.send(sandbox.Account)}
	// The account's lane pauses (it pulls nothing more, so the messages
	// keep their delivery counts) and probes on the pause schedule.
	c.eventually("the account's lane to pause for its token", func() bool {
		for _, l := range c.sb.Daemon.Engine.Status() {
			if l.Account == sandbox.Account && l.Paused && l.PauseClass == "identity" {
				return true
			}
		}
		return false
	})
	c.eventually("the worker to find the account unusable more than once", func() bool {
		return metricOf(t, c.sb.Daemon.Registry, "relay_messages_total", map[string]string{"account": sandbox.Account, "outcome": "paused"}) >= 1 &&
			strings.Count(c.logs.String(), `"message":"account paused: its mail stays queued"`) >= 2
	})
	if n := c.streamMsgs(queue.StreamMail); n != 3 {
		t.Fatalf("MAIL holds %d messages, want the 3 queued", n)
	}
	if n := c.streamMsgs(queue.StreamDLQ); n != 1 {
		t.Fatalf("%d messages dead-lettered while the account needs consent (1 was refused before)", n-1)
	}
	if len(c.sb.Fake.Messages()) != before {
		t.Fatal("mail was delivered for an account that needs consent")
	}

	// Re-consent (authtool login): the queued mail goes, no restart.
	if err := c.sb.Connect(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.waitDelivered(subjects...)
	waitIdle(t, c.ctx, c.js)
	if n := c.streamMsgs(queue.StreamDLQ); n != 1 {
		t.Fatalf("%d messages dead-lettered besides the one refused", n-1)
	}
	c.eventually("the healthy gauge after re-consent", func() bool {
		return c.sum("relay_token_state", map[string]string{"account": sandbox.Account, "state": "healthy"}) == 2
	})
}

func TestTokenSimulatedYearNeverNeedsConsent(t *testing.T) {
	// Access tokens living a day keep the year to 365 refreshes; the
	// fake's refresh tokens die after 90 days without use, and strict
	// rotation kills a refresh token used twice.
	c := startTokenCluster(t, 1, fakeo365.Config{AccessTTL: 24 * time.Hour})
	states := c.watchStates(sandbox.Account)
	end := t0.AddDate(1, 0, 0)
	refreshes := 0
	for c.clock.Now().Before(end) {
		// No mail flows: only the refresher acts. It parks on its next
		// due time only after the refresh its timer started.
		c.clock.Set(c.nextTimer())
		c.nextTimer()
		refreshes++
		if got := c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken); got != refreshes {
			t.Fatalf("day %d: %d refresh calls, want %d", refreshes, got, refreshes)
		}
	}
	if refreshes < 360 || refreshes > 370 {
		t.Fatalf("%d refreshes in a year of day-long tokens", refreshes)
	}
	c.eventually("the last refresh stored", func() bool {
		rec := c.record(sandbox.Account)
		return rec.State == token.StateHealthy && rec.Expiry.After(c.clock.Now())
	})
	for _, s := range states() {
		if s != token.StateHealthy {
			t.Fatalf("the account went %s during the year", s)
		}
	}
	if got := c.sb.Fake.RefreshReuses(); got != 0 {
		t.Fatalf("%d reused refresh tokens", got)
	}
	if n := len(c.eventsOf("account.consent_required")); n != 0 {
		t.Fatalf("%d consent_required events", n)
	}
	// A year later, mail still goes.
	c.waitDelivered(c.send(sandbox.Account))
}

func TestTokenSealedAtRestAndAppOnly(t *testing.T) {
	c := startTokenCluster(t, 1, fakeo365.Config{})
	if err := c.sb.ConnectApp(c.ctx, "billing", "billing@contoso.com"); err != nil {
		t.Fatal(err)
	}
	c.eventually("both accounts scheduled", func() bool { return len(c.clock.Pending()) == 2 })
	c.waitDelivered(c.send(sandbox.Account), c.send("billing"))

	// Both refreshed by the same service, past both old expiries.
	oldApp := c.record("billing")
	c.clock.Set(oldApp.Expiry.Add(time.Second))
	c.eventually("both refreshed", func() bool {
		return c.sb.Fake.TokenCalls(fakeo365.GrantRefreshToken) == 1 && c.sb.Fake.TokenCalls(fakeo365.GrantClientCredentials) == 2 &&
			c.record("billing").AccessToken != oldApp.AccessToken
	})
	c.waitDelivered(c.send(sandbox.Account), c.send("billing"))
	app := c.record("billing")
	if app.ClientSecret == "" || app.RefreshToken != "" {
		t.Fatalf("app-only record: %v", app)
	}

	// Raw KV bytes: no token, secret, key, nor even the field names.
	kv, err := c.js.KeyValue(c.ctx, token.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	raw := map[string][]byte{}
	for _, alias := range []string{sandbox.Account, "billing"} {
		e, err := kv.Get(c.ctx, alias)
		if err != nil {
			t.Fatal(err)
		}
		raw[alias] = e.Value()
		c.secrets.Check(t, "raw KV value of "+alias, e.Value())
		for _, field := range []string{"refresh_token", "access_token", "client_secret", "healthy"} {
			if strings.Contains(string(e.Value()), field) {
				t.Fatalf("raw KV value of %s contains %q", alias, field)
			}
		}
	}
	// A value moved under another account's key does not open.
	if _, err := kv.Put(c.ctx, "billing", raw[sandbox.Account]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.sb.Daemon.Store.Get(c.ctx, "billing"); !errors.Is(err, token.ErrOpen) {
		t.Fatalf("moved value: %v", err)
	}
	c.eventually("the unreadable record on /status and the gauges", func() bool {
		var st daemon.Status
		_ = json.Unmarshal(httpGet(t, "http://"+c.sb.Daemon.HTTPAddr+"/status"), &st)
		for _, a := range st.Accounts {
			if a.Alias == "billing" {
				return a.TokenState == "unreadable" &&
					metricOf(t, c.replica("r1").Registry, "relay_token_state", map[string]string{"account": "billing", "state": "healthy"}) == 0
			}
		}
		return false
	})
	// The delegated account is untouched.
	c.waitDelivered(c.send(sandbox.Account))
}
