package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"relay365/internal/testutil"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/consent"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/relay/relaytest"
	"relay365/internal/token"
)

var fast = relaytest.FastRetry

func startDaemon(t *testing.T, ctx context.Context, dir, keyFile string) *daemon.Daemon {
	t.Helper()
	d, err := daemon.Start(ctx, daemon.Config{
		DataDir: dir, KeyFile: keyFile, HTTPAddr: "off", NATSListen: "127.0.0.1:0", NATSSync: "1s",
		AckWait: 3 * time.Second, ShutdownGrace: 20 * time.Second, Retry: fast, Pause: fast,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func queued(t *testing.T, ctx context.Context, d *daemon.Daemon) uint64 {
	t.Helper()
	st, err := d.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.QueueDepth
}

// shutdownSetup starts an unpaced fake Office 365 (closed when the test
// ends) and makes a data directory with a sealing key for the daemon.
func shutdownSetup(t *testing.T) (fake *fakeo365.Server, dir, keyFile string) {
	t.Helper()
	fake, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	dir = t.TempDir()
	keyFile = filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	return fake, dir, keyFile
}

// connectAccount signs mailbox in at fake as account alias (no test
// mail), through the daemon's consent path, and waits for its lane.
func connectAccount(t *testing.T, ctx context.Context, d *daemon.Daemon, fake *fakeo365.Server, alias, mailbox string) {
	t.Helper()
	a := fake.Account(alias, mailbox, "contoso.onmicrosoft.com")
	if err := (consent.Enroller{Accounts: d.Accounts, Store: d.Store, SkipTestMail: true}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		t.Fatal(err)
	}
	if err := d.Engine.WaitBound(ctx, alias); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownMidStreamLosesAndDuplicatesNothing stops the daemon (what
// SIGTERM does: its context ends, then Close) while sends are in flight to
// a slow server, starts it again on the same data directory, and checks
// every message arrived exactly once.
func TestShutdownMidStreamLosesAndDuplicatesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fake, dir, keyFile := shutdownSetup(t)

	d := startDaemon(t, ctx, dir, keyFile)
	a := fake.Account("steady", "steady@contoso.com", "contoso.onmicrosoft.com")
	a.PerMinute = 1 << 20
	if err := (consent.Enroller{Accounts: d.Accounts, Store: d.Store}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		t.Fatal(err)
	}
	if err := d.Engine.WaitBound(ctx, "steady"); err != nil {
		t.Fatal(err)
	}
	base := len(fake.Messages()) // the consent test mail
	fake.DelayNextData(1<<30, 30*time.Millisecond)
	const n = 60
	for i := range n {
		b, _ := (&message.Message{ID: fmt.Sprintf("s-%02d", i), Account: "steady", To: []string{"ops@fabrikam.com"},
			Subject: fmt.Sprintf("steady %02d", i), Text: "x"}).Encode()
		if _, err := queue.Publish(ctx, d.JS, "steady", fmt.Sprintf("s-%02d", i), b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fake.WaitMessages(ctx, base+10); err != nil {
		t.Fatal(err)
	}
	inFlight := d.Engine.Status()[0].InFlight
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	sent := len(fake.Messages()) - base
	t.Logf("stopped with %d of %d sent and %d in flight", sent, n, inFlight)
	if sent >= n {
		t.Fatal("everything went before the stop; the test proves nothing")
	}

	d2 := startDaemon(t, ctx, dir, keyFile)
	// What the first run acked is gone; everything else is still queued.
	if q := queued(t, ctx, d2); q != uint64(n-sent) {
		t.Fatalf("after the restart %d queued, want %d (%d of %d were sent)", q, n-sent, sent, n)
	}
	if _, err := fake.WaitMessages(ctx, base+n); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for queued(t, ctx, d2) != 0 {
		select {
		case <-ctx.Done():
			t.Fatal("MAIL never drained")
		case <-tick.C:
		}
	}
	count := map[string]int{}
	for _, m := range fake.Messages()[base:] {
		count[m.Subject]++
	}
	for i := range n {
		if c := count[fmt.Sprintf("steady %02d", i)]; c != 1 {
			t.Fatalf("steady %02d delivered %d times", i, c)
		}
	}
	if len(count) != n {
		t.Fatalf("unexpected messages: %v", count)
	}
	st, _ := d2.Snapshot(ctx)
	if st.DLQSize != 0 {
		t.Fatalf("%d dead letters", st.DLQSize)
	}
	var acct *daemon.AccountStatus
	for i := range st.Accounts {
		if st.Accounts[i].Alias == "steady" {
			acct = &st.Accounts[i]
		}
	}
	if acct == nil || acct.Delivery == nil || !acct.Delivery.Bound || acct.Delivery.Paused {
		t.Fatalf("/status delivery: %+v", acct)
	}
}

func TestConfigValidation(t *testing.T) {
	base := func() daemon.Config {
		c := daemon.Config{KeyFile: "k"}
		c.Defaults()
		return c
	}
	for _, tc := range []struct {
		mutate func(c *daemon.Config)
		want   string
	}{
		{func(c *daemon.Config) { c.Retry.Base = time.Millisecond }, "--retry-base"},
		{func(c *daemon.Config) { c.Retry.Max = time.Second }, "--retry-max"},
		{func(c *daemon.Config) { c.Pause.Base = -1 }, "--pause-base"},
		{func(c *daemon.Config) { c.MaxAckPending = -1 }, "--max-ack-pending"},
		{func(c *daemon.Config) { c.MaxDeliver = 1 }, "--max-deliver"},
		{func(c *daemon.Config) { c.AckWait = time.Millisecond }, "--ack-wait"},
		{func(c *daemon.Config) { c.ShutdownGrace = -time.Second }, "--shutdown-grace"},
		{func(c *daemon.Config) { c.SMTP.MaxConns = -1 }, "--smtp-max-conns"},
		{func(c *daemon.Config) { c.HTTPAddr = "127.0.0.1:65536" }, "--http-addr"},
		{func(c *daemon.Config) { c.NATSListen = "127.0.0.1:port" }, "--nats-listen"},
	} {
		c := base()
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error naming %s, got %v", tc.want, err)
		}
	}
	if c := base(); c.Validate() != nil {
		err := c.Validate()
		t.Fatalf("defaults: %v", err)
	}
}

// TestCloseLogsTheEmbeddedServerStop: with many accounts most of a stop is
// the embedded nats-server stopping their consumers one by one (about
// 10 ms each, BENCHMARKS.md); Close says so in its log, with how many
// consumers it stopped and how long that took.
func TestCloseLogsTheEmbeddedServerStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fake, dir, keyFile := shutdownSetup(t)
	logs := &testutil.Buffer{}
	d, err := daemon.Start(ctx, daemon.Config{
		DataDir: dir, KeyFile: keyFile, HTTPAddr: "off", NATSListen: "127.0.0.1:0", NATSSync: "1s", Retry: fast, Pause: fast,
	}, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	const accounts = 3
	enrol := consent.Enroller{Accounts: d.Accounts, Store: d.Store, SkipTestMail: true}
	for i := range accounts {
		alias := fmt.Sprintf("box%d", i)
		if err := enrol.SignIn(ctx, fake.Account(alias, alias+"@contoso.com", "contoso"), consent.FollowURL(ctx)); err != nil {
			t.Fatal(err)
		}
		if err := d.Engine.WaitBound(ctx, alias); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(logs.String()) {
		var e struct {
			Message   string   `json:"message"`
			Consumers *int     `json:"consumers"`
			Took      *float64 `json:"took_ms"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Message != "embedded NATS server stopped" {
			continue
		}
		if e.Consumers == nil || *e.Consumers < accounts || e.Took == nil {
			t.Fatalf("stop logged as %s; want consumers ≥ %d (one per lane) and took", line, accounts)
		}
		return
	}
	t.Fatalf("no \"embedded NATS server stopped\" in the log:\n%s", logs.String())
}
