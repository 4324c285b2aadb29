package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/consent"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/relay/relaytest"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/producer"
)

// TestLeastPrivilegeUsers runs a whole relay under deploy/nats/auth.conf,
// the permissions the README recommends: authtool's path as relay-admin
// enrols an account, a token service as relay-tokens and workers as
// relay-worker deliver what a producer publishes. Then it checks what each
// user must not do: a producer publishes only mail.send.>, and neither a
// producer nor a worker reads relay_tokens or a worker's token replies.
func TestLeastPrivilegeUsers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	passwords := map[string]string{
		"producer": "RELAY_PRODUCER_PASSWORD", "relay-worker": "RELAY_WORKER_PASSWORD",
		"relay-tokens": "RELAY_TOKENS_PASSWORD", "relay-admin": "RELAY_ADMIN_PASSWORD",
	}
	as := map[string]queue.ConnectOptions{}
	for user, env := range passwords {
		pw := "pw-" + user + "-0123456789"
		t.Setenv(env, pw) // nats-server reads $VARS in its config from the environment
		f := filepath.Join(dir, user+".pw")
		if err := os.WriteFile(f, []byte(pw), 0o600); err != nil {
			t.Fatal(err)
		}
		as[user] = queue.ConnectOptions{User: user, PasswordFile: f}
	}
	opts, err := server.ProcessConfigFile("../../deploy/nats/auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	opts.JetStream, opts.StoreDir = true, filepath.Join(dir, "js")
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	url := ns.ClientURL()

	fake, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	// authtool's connection: creates the buckets and enrols.
	admin, err := queue.ConnectWith(url, "admin", as["relay-admin"])
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adminJS, _ := jetstream.New(admin)
	keyFile, accounts, store := relaytest.OpenStores(t, ctx, adminJS)

	tokensOpts := as["relay-tokens"]
	tokensOpts.InboxPrefix = "_INBOX_relay_tokens"
	workerOpts := as["relay-worker"]
	workerOpts.InboxPrefix = "_INBOX_relay_workers"
	start := func(roles string, o queue.ConnectOptions, key string) *daemon.Daemon {
		d, err := daemon.Start(ctx, daemon.Config{
			NATSURL: url, NATS: o, KeyFile: key, Roles: roles, HTTPAddr: "off", DataDir: t.TempDir(),
			AckWait: 3 * time.Second, ShutdownGrace: 5 * time.Second, Retry: fast, Pause: fast,
		}, zerolog.Nop())
		if err != nil {
			t.Fatalf("%s as %s: %v", roles, o.User, err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	start(daemon.RoleTokens, tokensOpts, keyFile)
	worker := start(daemon.RoleWorkers, workerOpts, "")

	acct := fake.Account("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com")
	if err := (consent.Enroller{Accounts: accounts, Store: store}).SignIn(ctx, acct, consent.FollowURL(ctx)); err != nil {
		t.Fatal(err)
	}
	if err := worker.Engine.WaitBound(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	base := len(fake.Messages())

	// A producer's connection, recording the permission errors the server
	// sends back asynchronously.
	var mu sync.Mutex
	var violations []string
	popts, err := as["producer"].Options()
	if err != nil {
		t.Fatal(err)
	}
	pnc, err := queue.Connect(url, "producer", append(popts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		mu.Lock()
		violations = append(violations, err.Error())
		mu.Unlock()
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer pnc.Close()
	p, err := producer.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "under least privilege", Text: "x"}); err != nil {
		t.Fatalf("producer publish: %v", err)
	}
	msgs, err := fake.WaitMessages(ctx, base+1)
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[base].Subject; got != "under least privilege" {
		t.Fatalf("delivered %q", got)
	}

	// What must fail. Each JetStream call gets a short deadline: a denied
	// request is dropped by the server, so the client sees a timeout or a
	// permissions error, never an answer.
	denied := func(who, what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s could %s", who, what)
		}
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, time.Second)
		t.Cleanup(cancel)
		return c
	}
	pjs, _ := jetstream.New(pnc)
	_, err = pjs.KeyValue(short(), token.Bucket)
	denied("a producer", "open relay_tokens", err)
	_, err = pjs.Publish(short(), "mail.dlq.alerts", []byte("{}"))
	denied("a producer", "publish a dead letter", err)
	_, err = pnc.Request("token.get", []byte(`{"account":"alerts"}`), time.Second)
	denied("a producer", "ask the token service for a token", err)
	_, err = worker.JS.KeyValue(short(), token.Bucket)
	denied("a worker", "open relay_tokens", err)
	_, err = worker.JS.Stream(short(), "KV_"+token.Bucket)
	denied("a worker", "read the relay_tokens stream", err)

	// Token replies go to the workers' own inboxes; a producer cannot
	// listen there.
	if _, err := pnc.SubscribeSync("_INBOX_relay_workers.>"); err != nil {
		t.Fatal(err)
	}
	if err := pnc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the server to refuse the subscription", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(violations, "\n"), `Permissions Violation for Subscription to "_INBOX_relay_workers.>"`)
	})
}
