package daemon_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/daemon"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
	"relay365/internal/token"
)

func TestConfigRoles(t *testing.T) {
	for _, tc := range []struct {
		roles, key string
		want       string // substring of the error, "" for valid
	}{
		{"", "k", ""},
		{"tokens,workers", "k", ""},
		{" workers , tokens ", "k", ""},
		{"workers", "", ""},
		{"tokens", "", "no token key"},
		{"tokens,mailer", "k", `unknown role "mailer"`},
		{"workers,workers", "k", "workers given twice"},
		{",", "k", `unknown role ""`},
	} {
		c := daemon.Config{Roles: tc.roles, KeyFile: tc.key}
		c.Defaults()
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("--roles %q: %v", tc.roles, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("--roles %q: got %v, want an error about %q", tc.roles, err, tc.want)
		}
	}
	c := daemon.Config{}
	c.Defaults()
	if !c.Has(daemon.RoleTokens) || !c.Has(daemon.RoleWorkers) {
		t.Fatalf("default roles %q, want both", c.Roles)
	}
}

// A workers-only process needs no sealing key: it gets tokens and token
// states from a token service replica over NATS.
func TestWorkersOnlyProcessNeedsNoKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := queuetest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	start := func(roles, key string) *daemon.Daemon {
		d, err := daemon.Start(ctx, daemon.Config{NATSURL: env.URL, KeyFile: key, Roles: roles, HTTPAddr: "off", Instance: roles}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	tokens := start(daemon.RoleTokens, keyFile)
	workers := start(daemon.RoleWorkers, "")
	if workers.Store != nil || workers.TokenService != nil || tokens.TokenService == nil {
		t.Fatal("roles not honoured")
	}
	if err := tokens.Accounts.Put(ctx, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	if _, err := tokens.Store.Put(ctx, token.Record{Account: "alerts", AccessToken: "AT-SECRET", RefreshToken: "RT-SECRET", Expiry: exp, State: token.StateHealthy}); err != nil {
		t.Fatal(err)
	}
	st, err := workers.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Accounts) != 1 || st.Accounts[0].TokenState != "healthy" || !st.Accounts[0].TokenExpiry.Equal(exp) {
		t.Fatalf("workers-only /status: %+v", st.Accounts)
	}
	tok, err := workers.TokenClient.Token(ctx, "alerts")
	if err != nil || tok.Token != "AT-SECRET" || tok.Mailbox != "alerts@contoso.com" {
		t.Fatalf("token through the service: %v %v", tok, err)
	}
}

// With the embedded server the daemon's own connection is in process (an
// in-memory pipe, no TCP per message); the listener still serves
// producers.
func TestEmbeddedServerConnectionIsInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, ctx, t.TempDir(), keyFile)
	if addr := d.NC.ConnectedAddr(); addr != "pipe" {
		t.Fatalf("daemon connected to %q, want the in-process pipe", addr)
	}
	nc, err := queue.ConnectWith(d.NATSURL, "producer", d.ClientOptions(roles.Producer))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.FlushWithContext(ctx); err != nil || nc.ConnectedAddr() == "pipe" {
		t.Fatalf("a producer over the listener: %q, %v", nc.ConnectedAddr(), err)
	}
}
