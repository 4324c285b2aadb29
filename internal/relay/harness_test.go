package relay_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay"
	"relay365/internal/relay/relaytest"
	"relay365/internal/submit"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

var fast = relaytest.FastRetry

// setup is what a test changes from the harness defaults.
type setup struct {
	fake      fakeo365.Config
	engine    relay.Config
	clock     *clock.Compressed // nil: wall clock
	transport *submit.Transport
	// sync is the embedded server's sync interval; default 5s.
	sync string
	// beforeStart runs on the stream before the engine starts.
	beforeStart func(ctx context.Context, js jetstream.JetStream)
	// timeout is the test's deadline (h.ctx); default 90s.
	timeout time.Duration
	// manualStart leaves the engine stopped until the test calls h.start.
	manualStart bool
}

// harness is a real embedded JetStream, the fake Office 365, the account
// registry, the sealed token store with in-process refresh, and the engine.
type harness struct {
	t        testing.TB
	ctx      context.Context // the test's deadline
	fake     *fakeo365.Server
	js       jetstream.JetStream
	url      string // the embedded server's client URL (a second replica connects there)
	setup    setup  // what the harness was made with (a second replica copies it)
	accounts *account.Registry
	store    *token.Store
	tokens   *tokensvc.Client // the workers' client of a token service replica on the same NATS
	engine   *relay.Engine
	reg      *prometheus.Registry
	logs     *testutil.Buffer // dumped when the test fails, scanned for secrets
	stop     func()           // stops the engine (graceful) and waits for it
}

func newHarness(t testing.TB, s setup) *harness {
	t.Helper()
	if s.timeout == 0 {
		s.timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, logs: &testutil.Buffer{}}
	// Fsync every few seconds instead of before every ack: these tests
	// are about delivery, not power loss, and run on shared cores.
	if s.sync == "" {
		s.sync = "5s"
	}
	env := queuetest.StartSync(t, s.sync)
	h.js = env.JS
	h.url = env.URL
	var err error
	if err := queue.EnsureStreams(ctx, h.js, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	_, h.accounts, h.store = relaytest.OpenStores(t, ctx, h.js)
	log := zerolog.New(h.logs)
	svc, err := tokensvc.Start(tokensvc.Config{NC: env.NC, Store: h.store, Accounts: h.accounts, Registerer: prometheus.NewRegistry(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	h.tokens = tokensvc.NewClient(tokensvc.ClientConfig{NC: env.NC})

	fc := s.fake
	fc.Dir = t.TempDir()
	if fc.PerMinute == 0 {
		// The consent test mails count at the fake, not in the engine's
		// pacer; tests that are about pacing set the limit explicitly.
		fc.PerMinute = -1
	}
	if s.clock != nil {
		fc.Now = s.clock.Now
	}
	if h.fake, err = fakeo365.Start(fc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.fake.Close() })

	ec := s.engine
	if ec.Retry.Base == 0 {
		ec.Retry = fast
	}
	if ec.Pause.Base == 0 {
		ec.Pause = fast
	}
	if ec.AckWait == 0 {
		ec.AckWait = 5 * time.Second
	}
	if ec.ShutdownGrace == 0 {
		ec.ShutdownGrace = 10 * time.Second
	}
	if ec.FetchWait == 0 {
		ec.FetchWait = time.Second
	}
	if ec.SweepEvery == 0 {
		ec.SweepEvery = 50 * time.Millisecond
	}
	if ec.UnknownGrace == 0 {
		ec.UnknownGrace = 300 * time.Millisecond
	}
	h.setup = s
	h.setup.engine = ec
	h.reg = prometheus.NewRegistry()
	deps := relay.Deps{JS: h.js, Accounts: h.accounts, Tokens: h.tokens, TokenEvents: h.tokens, Transport: s.transport, Registry: h.reg, Log: log}
	if s.clock != nil {
		deps.Clock = s.clock
	}
	h.engine = relay.NewEngine(deps, ec)
	if s.beforeStart != nil {
		s.beforeStart(ctx, h.js)
	}
	h.stop = func() {}
	if !s.manualStart {
		h.start()
	}
	t.Cleanup(func() {
		h.stop()
		h.assertNoSecretsLogged()
		if t.Failed() {
			t.Logf("relay logs:\n%s", h.logs.String())
		}
	})
	return h
}

// start runs the engine until stop.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.engine.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("engine: %v", err)
			}
		})
	}
	select {
	case <-h.engine.Ready():
	case err := <-done:
		h.t.Fatalf("engine did not start: %v", err)
	case <-h.ctx.Done():
		h.t.Fatal("engine did not start")
	}
}

// enroll connects an account through consent (a test mail included) with
// pacing effectively off unless mod sets limits, and waits for its lane.
func (h *harness) enroll(alias, mailbox, tenant string, mod func(a *account.Account)) account.Account {
	h.t.Helper()
	a := h.fake.Account(alias, mailbox, tenant)
	a.PerMinute, a.PerDay = 1<<20, 1<<24
	if mod != nil {
		mod(&a)
	}
	if err := (consent.Enroller{Accounts: h.accounts, Store: h.store}).SignIn(h.ctx, a, consent.FollowURL(h.ctx)); err != nil {
		h.t.Fatalf("enroll %s: %v", alias, err)
	}
	if err := h.engine.WaitBound(h.ctx, alias); err != nil {
		h.t.Fatal(err)
	}
	a.Normalize()
	return a
}

// publish queues a one-recipient message with id and subject.
func (h *harness) publish(alias, id, subject string) {
	h.t.Helper()
	h.publishMsg(&message.Message{ID: id, Account: alias, To: []string{"ops@fabrikam.com"}, Subject: subject, Text: "body of " + id})
}

func (h *harness) publishMsg(m *message.Message) {
	h.t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := queue.Publish(h.ctx, h.js, m.Account, m.ID, b); err != nil {
		h.t.Fatal(err)
	}
}

// delivered counts captured messages by subject (the consent test mails
// left out).
func (h *harness) delivered() map[string]int {
	out := map[string]int{}
	for _, m := range h.fake.Messages() {
		if !strings.HasPrefix(m.Subject, "Relay365: ") {
			out[m.Subject]++
		}
	}
	return out
}

// waitFor checks cond every 5ms until it holds or the test's deadline.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-h.ctx.Done():
			h.t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// paced sums what the pacing record of key (a mailbox as relay_pacing
// spells it, "box=contoso.com") counts: messages and recipients.
// pacing is a mailbox's pacing record as stored.
func (h *harness) pacing(key string) jetstream.KeyValueEntry {
	h.t.Helper()
	kv, err := h.js.KeyValue(h.ctx, pacing.Bucket)
	if err != nil {
		h.t.Fatal(err)
	}
	e, err := kv.Get(h.ctx, key)
	if err != nil {
		h.t.Fatal(err)
	}
	return e
}

// pacingRevision is the KV revision of a mailbox's pacing record.
func (h *harness) pacingRevision(key string) uint64 { return h.pacing(key).Revision() }

func (h *harness) paced(key string) (msgs, rcpts int) {
	h.t.Helper()
	e := h.pacing(key)
	var rec struct{ Msgs, Rcpts []struct{ N int } }
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		h.t.Fatal(err)
	}
	for _, s := range rec.Msgs {
		msgs += s.N
	}
	for _, s := range rec.Rcpts {
		rcpts += s.N
	}
	return msgs, rcpts
}

// queued is the number of messages in MAIL.
func (h *harness) queued() uint64 {
	h.t.Helper()
	return queuetest.Msgs(h.t, h.ctx, h.js, queue.StreamMail)
}

func (h *harness) deadLetters(account string) []queue.DeadLetterEntry {
	h.t.Helper()
	dl, err := queue.ListDeadLetters(h.ctx, h.js, queue.DeadLetterFilter{Account: account})
	if err != nil {
		h.t.Fatal(err)
	}
	return dl
}

// metric reads one series from the engine's registry (0 when absent).
func (h *harness) metric(name string, labels ...string) float64 {
	h.t.Helper()
	v, _ := h.series(name, labels...)
	return v
}

// series is the value of the first series of name with labels, and
// whether there is one.
func (h *harness) series(name string, labels ...string) (float64, bool) {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func (h *harness) outcome(account, outcome string) float64 {
	return h.metric("relay_messages_total", "account", account, "outcome", outcome)
}

func (h *harness) lane(alias string) relay.LaneStatus {
	for _, l := range h.engine.Status() {
		if l.Account == alias {
			return l
		}
	}
	h.t.Fatalf("no lane for %s", alias)
	return relay.LaneStatus{}
}

func msgFor(alias, id, subject string) *message.Message {
	return &message.Message{ID: id, Account: alias, To: []string{"ops@fabrikam.com"}, Subject: subject, Text: "body of " + id}
}

// relaytestEnroll consents a again (after a revocation).
func relaytestEnroll(h *harness, a account.Account) error {
	return (consent.Enroller{Accounts: h.accounts, Store: h.store}).SignIn(h.ctx, a, consent.FollowURL(h.ctx))
}

// assertNoSecretsLogged: the live tokens of every account appear nowhere
// in the logs, the metrics or the engine's status.
func (h *harness) assertNoSecretsLogged() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accts, err := h.accounts.List(ctx)
	if err != nil {
		h.t.Error(err)
		return
	}
	var metrics strings.Builder
	families, _ := h.reg.Gather()
	for _, f := range families {
		metrics.WriteString(f.String())
	}
	status, _ := json.Marshal(h.engine.Status())
	surfaces := map[string]string{"logs": h.logs.String(), "metrics": metrics.String(), "status": string(status)}
	for _, a := range accts {
		rec, _, err := h.store.Get(ctx, a.Alias)
		if err != nil {
			continue
		}
		for name, text := range surfaces {
			for _, secret := range []string{rec.AccessToken, rec.RefreshToken} {
				if secret != "" && strings.Contains(text, secret) {
					h.t.Errorf("the %s hold a token of %s", name, a.Alias)
				}
			}
		}
	}
}
