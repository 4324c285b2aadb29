package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/body"
	"relay365/internal/consent"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay/relaytest"
	"relay365/internal/roles"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/producer"
)

// startAuthConf runs nats-server with deploy/nats/auth.conf and returns
// its URL and each role's connect options.
func startAuthConf(t *testing.T) (string, map[roles.Role]queue.ConnectOptions) {
	t.Helper()
	dir := t.TempDir()
	as := map[roles.Role]queue.ConnectOptions{}
	for _, r := range roles.All {
		pw := "pw-" + string(r) + "-0123456789"
		t.Setenv("RELAY_"+strings.ToUpper(string(r))+"_PASSWORD", pw) // nats-server reads $VARS in its config from the environment
		f := filepath.Join(dir, string(r)+".pw")
		if err := os.WriteFile(f, []byte(pw), 0o600); err != nil {
			t.Fatal(err)
		}
		o := queue.ConnectOptions{User: r.User(), PasswordFile: f}
		roles.Default(&o, "", r) // the role's reply prefix
		as[r] = o
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
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	return ns.ClientURL(), as
}

// setUpAsAdmin starts nats-server with auth.conf and runs relay setup as
// the admin, whose JetStream it returns (closed with the test).
func setUpAsAdmin(t *testing.T, ctx context.Context) (string, map[roles.Role]queue.ConnectOptions, jetstream.JetStream) {
	t.Helper()
	url, as := startAuthConf(t)
	_, adminJS := queuetest.ConnectAs(t, url, "admin", as[roles.Admin])
	if err := daemon.Setup(ctx, adminJS, 1, 0); err != nil {
		t.Fatalf("relay setup as the admin: %v", err)
	}
	return url, as, adminJS
}

// TestLeastPrivilegeUsers runs a whole relay under deploy/nats/auth.conf,
// the permissions the README recommends: relay setup and authtool's path
// as relay-admin make the streams and buckets and enrol an account, a
// token service as relay-tokens and workers as relay-worker (which may
// not create a stream) deliver what a producer publishes. Then every
// attack of attacks is tried as every role it names, and refused.
func TestLeastPrivilegeUsers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	url, as := startAuthConf(t)

	fake, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	// relay setup and authtool's connection: the streams and buckets,
	// then the enrolment.
	_, adminJS := queuetest.ConnectAs(t, url, "admin", as[roles.Admin])
	if err := daemon.Setup(ctx, adminJS, 1, 0); err != nil {
		t.Fatalf("relay setup as the admin: %v", err)
	}
	keyFile, accounts, store := relaytest.OpenStores(t, ctx, adminJS)
	// relay serve picks its role's reply prefix by itself.
	tokensOpts, workerOpts := as[roles.Tokens], as[roles.Worker]
	tokensOpts.InboxPrefix, workerOpts.InboxPrefix = "", ""
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

	pnc, _ := queuetest.ConnectAs(t, url, "producer", as[roles.Producer])
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
	// A large message: the producer stores its body, the worker reads it
	// into DATA and deletes it, each with only its own permissions.
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte('a' + i%26)
	}
	if _, err := p.Publish(ctx, &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "large, least privilege", Text: "x",
		Attachments: []producer.Attachment{{Filename: "a.txt", Data: big}}}); err != nil {
		t.Fatalf("producer publish of a large message: %v", err)
	}
	if msgs, err = fake.WaitMessages(ctx, base+2); err != nil {
		t.Fatal(err)
	}
	if got := msgs[base+1]; got.Subject != "large, least privilege" || len(got.Data) < len(big) {
		t.Fatalf("delivered %q, %d bytes", got.Subject, len(got.Data))
	}
	// Many messages at once: an atomic batch needs nothing a single
	// publish does not (its commit is acknowledged on the inbox).
	var batch []*producer.Message
	for i := range queue.MinBatch {
		batch = append(batch, &producer.Message{Account: "alerts", To: []string{"ops@contoso.com"}, Subject: fmt.Sprintf("batched %d, least privilege", i), Text: "x"})
	}
	res, err := p.PublishBatch(ctx, batch)
	if err != nil || len(res) != len(batch) || res[len(res)-1].Seq != res[0].Seq+uint64(len(batch)-1) {
		t.Fatalf("producer batch publish: %+v, %v; want %d contiguous sequences", res, err, len(batch))
	}
	if msgs, err = fake.WaitMessages(ctx, base+2+len(batch)); err != nil {
		t.Fatal(err)
	}
	bodies, err := body.Open(ctx, adminJS)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the worker to delete the sent body", func() bool {
		names, err := bodies.Names(ctx, time.Now().Add(time.Hour))
		return err == nil && len(names) == 0
	})
	tryAttacks(t, ctx, url, as)
	tryLimitsReplies(t, ctx, url, as, adminJS, "alerts")
}

// An upgrade over a relay_tokens bucket made with history 5: a token
// service, which may not change a bucket, refuses to start and names
// relay setup; relay setup as the admin brings the bucket to history 1
// (dropping the older revisions) and the token service starts.
func TestTokenServiceWaitsForSetupOnAnOlderTokenBucket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	kv, err := adminJS.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: token.Bucket, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := kv.Put(ctx, "alerts", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{NATSURL: url, NATS: as[roles.Tokens], KeyFile: keyFile, Roles: daemon.RoleTokens, HTTPAddr: "off", DataDir: t.TempDir()}
	// The server never answers the refused update: the start gives up
	// when its context ends (here after a few seconds) and says why.
	sctx, scancel := context.WithTimeout(ctx, 4*time.Second)
	defer scancel()
	if d, err := daemon.Start(sctx, cfg, zerolog.Nop()); err == nil {
		d.Close()
		t.Fatal("the token service started on a bucket it may not bring up to date")
	} else if !strings.Contains(err.Error(), "history 5, want 1") || !strings.Contains(err.Error(), "run `relay setup` with the admin credentials") {
		t.Fatalf("the refusal does not say what differs and what to do: %v", err)
	}
	if err := daemon.Setup(ctx, adminJS, 1, 0); err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil || st.History() != 1 || st.Values() != 1 {
		t.Fatalf("after relay setup: %v %v", st, err)
	}
	d, err := daemon.Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("token service after relay setup: %v", err)
	}
	d.Close()
}

// An upgrade over streams made by an earlier version: a body bucket in
// nats.go's Object Store layout (no chunk limit, so 8 MiB blocks), and
// MAIL without its consumer limit. A worker, which may not change a
// stream, refuses to start and names relay setup instead of waiting for
// an answer that never comes; relay setup as the admin brings the stream
// up to date and the worker starts.
func TestWorkerWaitsForSetupOnOlderStreams(t *testing.T) {
	for _, tc := range []struct {
		stream string
		older  func(c *jetstream.StreamConfig)
		says   string
		check  func(c jetstream.StreamConfig) bool
	}{
		{body.StreamName, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 0 }, "no chunk limit; want 1, none, 1048576 chunks per object",
			func(c jetstream.StreamConfig) bool { return c.MaxMsgsPerSubject == queue.BodyMaxChunksPerObject }},
		// a body bucket that allows rollups, as nats.go makes it: a
		// producer's "Nats-Rollup: all" would purge every body
		{body.StreamName, func(c *jetstream.StreamConfig) { c.AllowRollup = true }, "rollups allowed (whoever may store a body could purge them all), want none",
			func(c jetstream.StreamConfig) bool { return !c.AllowRollup }},
		{queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxConsumers = 1000 }, "stream MAIL has settings this version changes",
			func(c jetstream.StreamConfig) bool { return c.MaxConsumers == queue.MailMaxConsumers }},
	} {
		t.Run(tc.stream, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			url, as, adminJS := setUpAsAdmin(t, ctx)
			st, err := adminJS.Stream(ctx, tc.stream)
			if err != nil {
				t.Fatal(err)
			}
			older := st.CachedInfo().Config
			tc.older(&older)
			if _, err := adminJS.UpdateStream(ctx, older); err != nil {
				t.Fatal(err)
			}
			workerOpts := as[roles.Worker]
			workerOpts.InboxPrefix = ""
			cfg := daemon.Config{NATSURL: url, NATS: workerOpts, Roles: daemon.RoleWorkers, HTTPAddr: "off", DataDir: t.TempDir()}
			sctx, scancel := context.WithTimeout(ctx, 4*time.Second)
			defer scancel()
			if d, err := daemon.Start(sctx, cfg, zerolog.Nop()); err == nil {
				d.Close()
				t.Fatal("a worker started on a stream it may not bring up to date")
			} else if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "run `relay setup` with the admin credentials") {
				t.Fatalf("the refusal does not say what differs and what to do: %v", err)
			}
			if err := daemon.Setup(ctx, adminJS, 1, 0); err != nil {
				t.Fatal(err)
			}
			if st, err = adminJS.Stream(ctx, tc.stream); err != nil || !tc.check(st.CachedInfo().Config) {
				t.Fatalf("after relay setup: %v", err)
			}
			d, err := daemon.Start(ctx, cfg, zerolog.Nop())
			if err != nil {
				t.Fatalf("worker after relay setup: %v", err)
			}
			d.Close()
		})
	}
}
