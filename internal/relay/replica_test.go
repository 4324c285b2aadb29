package relay_test

import (
	"context"
	"errors"
	"fmt"
	"relay365/internal/clock"
	"relay365/internal/fakeo365"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/testutil"
	"relay365/internal/token/tokensvc"
)

// replica is a second worker process on the harness's JetStream: its own
// NATS connection, account registry, token client, metrics and engine,
// with the harness's engine settings and clock. The harness's token
// service answers it, as the tokens replica of a cluster would.
type replica struct {
	h      *harness
	nc     *nats.Conn
	engine *relay.Engine
	reg    *prometheus.Registry
	logs   *testutil.Buffer
	stop   func()
}

func (h *harness) replica() *replica {
	h.t.Helper()
	nc, err := queue.Connect(h.url, "replica")
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	accounts, err := account.OpenRegistry(h.ctx, js)
	if err != nil {
		h.t.Fatal(err)
	}
	tokens := tokensvc.NewClient(tokensvc.ClientConfig{NC: nc})
	r := &replica{h: h, nc: nc, reg: prometheus.NewRegistry(), logs: &testutil.Buffer{}}
	deps := relay.Deps{JS: js, Accounts: accounts, Tokens: tokens, TokenEvents: tokens, Transport: h.setup.transport,
		Registry: r.reg, Log: zerolog.New(r.logs).With().Str("replica", "2").Logger()}
	if h.setup.clock != nil {
		deps.Clock = h.setup.clock
	}
	r.engine = relay.NewEngine(deps, h.setup.engine)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.engine.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("replica engine: %v", err)
			}
		})
	}
	h.t.Cleanup(func() {
		r.stop()
		if h.t.Failed() {
			h.t.Logf("replica logs:\n%s", r.logs.String())
		}
	})
	select {
	case <-r.engine.Ready():
	case err := <-done:
		h.t.Fatalf("replica engine did not start: %v", err)
	case <-h.ctx.Done():
		h.t.Fatal("replica engine did not start")
	}
	return r
}

// metric reads one series from the replica's registry (0 when absent).
func (r *replica) metric(name string, labels ...string) float64 {
	r.h.t.Helper()
	hh := *r.h
	hh.reg = r.reg
	v, _ := hh.series(name, labels...)
	return v
}

func (r *replica) outcome(account, outcome string) float64 {
	return r.metric("relay_messages_total", "account", account, "outcome", outcome)
}

// TestTwoReplicasShareOneMailboxPace: two worker processes send for one
// mailbox, offered ten times what Office 365 allows, on a compressed clock
// shared with the fake at its real limit of 30 a minute. Their pacers share
// the mailbox's relay_pacing record, so together they stay within it: the
// fake never answers 554 5.2.0, every message is delivered once, and no
// rolling minute holds more than 30. max_conns 1 each keeps the two within
// Office 365's 3 connections (docs/design.md §6), so no 432 either.
func TestTwoReplicasShareOneMailboxPace(t *testing.T) {
	clk := clock.NewCompressed(120) // a minute passes in half a second
	h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{PerMinute: 30, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
	h.enroll("shared", "shared@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.PerMinute, a.PerDay, a.MaxConns = 0, 0, 1
	})
	r := h.replica()
	if err := r.engine.WaitBound(h.ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	<-clk.NewTimer(time.Minute).C() // the consent test mail leaves the minute
	const n = 150
	for i := range n {
		h.publish("shared", fmt.Sprintf("s-%03d", i), fmt.Sprintf("shared %03d", i))
		<-clk.NewTimer(200 * time.Millisecond).C()
	}
	h.waitFor("all delivered", func() bool { return h.queued() == 0 })
	checkPaced(t, h, n, time.Minute, 30)
	a, b := h.outcome("shared", "sent"), r.outcome("shared", "sent")
	t.Logf("replica 1 sent %v, replica 2 sent %v", a, b)
	if a == 0 || b == 0 {
		t.Logf("one replica sent everything: the test did not exercise sharing")
	}
}

// TestTwoReplicasShareOneMailboxDayBudget: as above for the recipients of
// a day (here 20), on a clock where a day passes in a second, with each
// replica at Office 365's 3 connections (so 432 may come, and is allowed:
// design §6); a quota reply may not.
func TestTwoReplicasShareOneMailboxDayBudget(t *testing.T) {
	clk := clock.NewCompressed(86400)
	h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{PerMinute: 30, PerDay: 20, MaxConns: -1, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
	h.enroll("daily", "daily@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.PerMinute, a.PerDay = 0, 20
	})
	r := h.replica()
	if err := r.engine.WaitBound(h.ctx, "daily"); err != nil {
		t.Fatal(err)
	}
	<-clk.NewTimer(24 * time.Hour).C()
	const n = 20
	queueDaily(h, n)
	h.waitFor("all delivered", func() bool { return h.queued() == 0 })
	checkPaced(t, h, n, 24*time.Hour, 5)
	t.Logf("replica 1 sent %v, replica 2 sent %v", h.outcome("daily", "sent"), r.outcome("daily", "sent"))
}

// holder is the engine that has the account's message in flight.
func inFlight(e *relay.Engine, alias string) int {
	for _, l := range e.Status() {
		if l.Account == alias {
			return l.InFlight
		}
	}
	return 0
}

// TestRemovedAccountInFlightOnAnotherReplica: an account is removed while
// one replica is in the middle of sending its message and the other has
// nothing of it. The idle replica's lane ends at once; it must not delete
// the account's shared consumer under the busy one. Deleted, the message
// went back to the stream while its transaction ran: the sweeper
// dead-lettered it as "no such account" although Office 365 accepted it a
// moment later (delivered and in MAIL_DLQ), and the busy replica's ack
// found no consumer.
func TestRemovedAccountInFlightOnAnotherReplica(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("gone", "gone@contoso.com", "contoso.onmicrosoft.com", nil)
	r := h.replica()
	if err := r.engine.WaitBound(h.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	h.fake.DelayNextData(1, 3*time.Second)
	h.publish("gone", "g-0", "gone 0")
	h.waitFor("the message's DATA held", func() bool { return h.fake.DataInProgress() == 1 })
	busy, idle := "harness", "replica"
	if inFlight(r.engine, "gone") > 0 {
		busy, idle = idle, busy
	}
	t.Logf("the %s sends, the %s is idle", busy, idle)
	if err := h.accounts.Delete(h.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the message accepted", func() bool { return h.delivered()["gone 0"] == 1 })
	h.waitFor("MAIL drained", func() bool { return h.queued() == 0 })
	if dl := h.deadLetters("gone"); len(dl) > 0 {
		t.Fatalf("a message Office 365 accepted was dead-lettered: %q", dl[0].Reason)
	}
	if n := h.outcome("gone", "sent") + r.outcome("gone", "sent"); n != 1 {
		t.Fatalf("outcome sent %v times, want 1", n)
	}
	// The consumer holds nothing now: the process that acked the message
	// deletes it.
	h.waitFor("the removed account's consumer deleted", func() bool {
		_, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.AccountConsumer("gone"))
		return errors.Is(err, jetstream.ErrConsumerNotFound)
	})
}

// TestReAddedAccountWhileAnotherReplicaSends: a replica stopping (a
// rolling restart) still sends a message of an account when the account
// is removed and added again. The other replica's lane of the removed
// account ends at once; had it deleted the shared consumer, the message
// would have gone back to the stream in mid-transaction and the lane of
// the account added again would have fetched it from the consumer made
// anew, found no marker yet, and sent it a second time.
func TestReAddedAccountWhileAnotherReplicaSends(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{UnknownGrace: time.Hour}})
	a := h.enroll("again", "again@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.DelayNextData(1, 3*time.Second)
	h.publish("again", "a-0", "again 0")
	h.waitFor("the message's DATA held", func() bool { return h.fake.DataInProgress() == 1 })
	// The harness's engine holds it; the replica starts now and has none.
	r := h.replica()
	if err := r.engine.WaitBound(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }() // finishes its send within the grace
	if err := h.accounts.Delete(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the replica's lane to end", func() bool { return len(r.engine.Status()) == 0 })
	if err := relaytestEnroll(h, a); err != nil {
		t.Fatal(err)
	}
	if err := r.engine.WaitBound(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	<-stopped
	h.waitFor("MAIL drained", func() bool { return h.queued() == 0 })
	if n := h.delivered()["again 0"]; n != 1 {
		t.Fatalf("delivered %d times, want 1", n)
	}
	if dl := h.deadLetters("again"); len(dl) > 0 {
		t.Fatalf("dead-lettered: %q", dl[0].Reason)
	}
}

// TestRemovedAccountsHeldMailIsSweptThroughItsConsumer: a removed
// account's consumer stays while it holds messages, so the mail a lane
// had fetched ahead and gave back is dead-lettered through that consumer
// by the sweeper, which then deletes it; the one in mid-transaction is
// sent and acked, not dead-lettered.
func TestRemovedAccountsHeldMailIsSweptThroughItsConsumer(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("held", "held@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	h.fake.DelayNextData(1, 2*time.Second)
	for i := range 5 {
		h.publish("held", fmt.Sprintf("h-%d", i), fmt.Sprintf("held %d", i))
	}
	h.waitFor("one message's DATA held, the rest fetched ahead", func() bool {
		return h.fake.DataInProgress() == 1 && inFlight(h.engine, "held") == 5
	})
	if err := h.accounts.Delete(h.ctx, "held"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("MAIL drained", func() bool { return h.queued() == 0 })
	if n := len(h.delivered()); n != 1 {
		t.Fatalf("%d delivered, want the one in mid-transaction", n)
	}
	if dl := h.deadLetters("held"); len(dl) != 4 {
		t.Fatalf("%d dead letters, want the 4 not sent", len(dl))
	}
	h.waitFor("the removed account's consumer deleted", func() bool {
		_, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.AccountConsumer("held"))
		return errors.Is(err, jetstream.ErrConsumerNotFound)
	})
}

// TestQuotaRefusalPausesEachReplicaOnce: Office 365 refuses a mailbox
// with 554 5.2.0 (submission quota). Pauses are per process (design §5.3),
// so each replica meets the refusal on its own; but each then stops: with
// probes an hour away the fake sees at most one refusal per session of
// each replica, not one per queued message.
func TestQuotaRefusalPausesEachReplicaOnce(t *testing.T) {
	slow := relay.Backoff{Base: time.Hour, Max: time.Hour}
	h := newHarness(t, setup{engine: relay.Config{Pause: slow}})
	// One session each keeps the two within Office 365's three
	// connections: the fake's 432 would make them retry (and on the
	// test's fast schedule use up MaxDeliver), which is not what this
	// test is about.
	a := h.enroll("quota", "quota@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	r := h.replica()
	if err := r.engine.WaitBound(h.ctx, "quota"); err != nil {
		t.Fatal(err)
	}
	h.fake.SetQuotaExceeded(a.Mailbox, true)
	for i := range 60 {
		h.publish("quota", fmt.Sprintf("q-%02d", i), fmt.Sprintf("quota %02d", i))
	}
	paused := func(e *relay.Engine) bool {
		for _, l := range e.Status() {
			if l.Account == "quota" {
				return l.Paused && l.InFlight == 0
			}
		}
		return false
	}
	h.waitFor("both replicas paused", func() bool { return paused(h.engine) && paused(r.engine) })
	refusals := h.fake.Replies()["554 5.2.0"]
	t.Logf("554 5.2.0 answered %d times; sent %v", refusals, h.outcome("quota", "paused")+r.outcome("quota", "paused"))
	if refusals > 2*a.MaxConns {
		t.Fatalf("the fake refused %d times; want at most %d (one per session of each replica)", refusals, 2*a.MaxConns)
	}
	if n := len(h.delivered()); n != 0 {
		t.Fatalf("%d delivered over quota", n)
	}
	if dl := h.deadLetters("quota"); len(dl) != 0 {
		t.Fatalf("dead letters: %q", dl[0].Reason)
	}
}
