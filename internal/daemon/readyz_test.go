package daemon_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/daemon"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
	"relay365/internal/token"
)

// TestReadyzNamesTheTokenServiceWhenItIsGone: a workers-only relay is
// ready while the token service answers; when the token service stops,
// /readyz turns 503 and says that the token service does not answer, not
// "run authtool login": an operator following the readiness message must
// be sent to the process that is down, not to re-consent a mailbox whose
// token is fine. /healthz stays ok (Kubernetes must not restart a worker
// that only waits for the token service).
func TestReadyzNamesTheTokenServiceWhenItIsGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env := queuetest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	tokens, err := daemon.Start(ctx, daemon.Config{NATSURL: env.URL, KeyFile: keyFile, Roles: daemon.RoleTokens, HTTPAddr: "off", Instance: "tokens"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tokens.Close() })
	if err := tokens.Accounts.Put(ctx, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Store.Put(ctx, token.Record{Account: "alerts", AccessToken: "AT-SECRET", RefreshToken: "RT-SECRET",
		Expiry: time.Now().Add(time.Hour), State: token.StateHealthy}); err != nil {
		t.Fatal(err)
	}
	workers, err := daemon.Start(ctx, daemon.Config{NATSURL: env.URL, Roles: daemon.RoleWorkers, HTTPAddr: "127.0.0.1:0", Instance: "workers"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { workers.Close() })

	get := func(path string) (int, string) { return testutil.Get(ctx, "http://"+workers.HTTPAddr+path) }
	testutil.Eventually(t, ctx, "the worker ready", func() bool {
		code, _ := get("/readyz")
		return code == http.StatusOK
	})

	tokens.Close()
	var body string
	testutil.Eventually(t, ctx, "/readyz 503 once the token service is gone", func() bool {
		var code int
		code, body = get("/readyz")
		return code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, "token service") || strings.Contains(body, "authtool login") {
		t.Errorf("/readyz with the token service gone: %q; want it to name the token service, not authtool login", body)
	}
	if code, b := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the token service gone: %d %s, want 200", code, b)
	}
}
