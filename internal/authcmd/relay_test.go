package authcmd_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/cli"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/token"
	"relay365/producer"
)

// A relay that is already running sends for an account authtool adds
// afterwards, without a restart.
func TestRunningRelayDeliversForNewAccount(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.Start(testCtx(t), daemon.Config{
		NATSListen: "127.0.0.1:-1", DataDir: dir, KeyFile: keyFile, HTTPAddr: "off",
		AckWait: 5 * time.Second, ShutdownGrace: 5 * time.Second,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	env := map[string]string{"RELAY_NATS_URL": d.NATSURL, "RELAY_TOKEN_KEY_FILE": keyFile, "RELAY_DATA_DIR": dir}
	if r := w.run(person{follow: true, env: env}, w.login("alerts", mailbox)...); r.code != cli.ExitOK {
		t.Fatalf("login: exit %d", r.code)
	}
	nc, err := queue.ConnectWith(d.NATSURL, "test-producer", d.ClientOptions(roles.Producer))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p, err := producer.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, err := p.Publish(ctx, &producer.Message{ID: "first-alert", Account: "alerts", To: []string{"ops@contoso.com"},
		Subject: "CPU high on web-3", Text: "load 17.2"}); err != nil {
		t.Fatal(err)
	}
	msgs, err := w.fake.WaitMessages(ctx, 2) // the test mail, then the alert
	if err != nil {
		t.Fatal(err)
	}
	if msgs[1].Subject != "CPU high on web-3" || msgs[1].Mailbox != mailbox || msgs[1].To[0] != "ops@contoso.com" {
		t.Fatalf("delivered %+v", msgs[1])
	}
}
