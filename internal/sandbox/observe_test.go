package sandbox_test

import (
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"relay365/internal/queue"
	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
	"relay365/internal/token/tokentest"
)

// The metric names the dashboards and alert rules rely on: each
// must be exported once traffic, a failure and a revoked account happened.
var contractMetrics = []string{
	"relay_messages_total", "relay_send_duration_seconds", "relay_smtp_replies_total",
	"relay_queue_pending", "relay_queue_ack_pending", "relay_dlq_messages",
	"relay_smtp_sessions", "relay_pacing_wait_seconds", "relay_account_paused", "relay_account_binding_mismatch_total",
	"relay_token_state", "relay_token_expiry_timestamp_seconds", "relay_token_refresh_total", "relay_token_last_refresh_timestamp_seconds",
	"relay_build_info", "go_goroutines", "process_resident_memory_bytes",
	"relay_ingress_messages_total", "relay_ingress_auth_failures_total", "relay_ingress_sessions",
	"relay_ingress_refused_connections_total",
}

func TestObservabilityAfterTrafficAndFailures(t *testing.T) {
	s, logs := start(t, t.TempDir())
	ctx := testCtx(t)
	reg := s.Daemon.Registry
	// Mail for an alias nobody registered counts under account="unknown"
	// (a bounded label), first waiting, then dead-lettered by the sweeper.
	if _, err := queue.Publish(ctx, s.Daemon.JS, "nobody-1", "stray", []byte(`{"to":["ops@contoso.com"],"subject":"x","text":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if got := tokentest.Metric(t, reg, "relay_queue_pending", map[string]string{"account": "unknown"}); got != 1 {
		t.Errorf("relay_queue_pending{account=unknown} = %v, want 1", got)
	}
	testutil.Eventually(t, ctx, "the stray message dead-lettered as unknown", func() bool {
		return tokentest.Metric(t, reg, "relay_dlq_messages", map[string]string{"account": "unknown"}) == 1
	})
	if got := tokentest.Metric(t, reg, "relay_dlq_messages", map[string]string{"account": "nobody-1"}); got != -1 {
		t.Errorf("an unregistered alias became a label value: %v", got)
	}
	sandboxtest.Exercise(t, ctx, s, nil)
	testutil.Eventually(t, ctx, "the SMTP submission sessions closed", func() bool {
		return tokentest.Metric(t, reg, "relay_ingress_sessions", nil) == 0
	})

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, name := range contractMetrics {
		if !have[name] {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	metric := func(name string, labels map[string]string) float64 {
		return tokentest.Metric(t, reg, name, labels)
	}
	// Exercise waits for the store and the streams; these series follow
	// them: the token state gauge is set from the token store's watch,
	// after the record was written; the lane sets relay_account_paused
	// after its status shows the pause; a dead letter is counted after
	// its original left MAIL. Wait for each, then check them exactly.
	revokedPaused := func() float64 {
		paused := 0.0
		for _, reason := range []string{"identity", "auth"} {
			paused += max(0, metric("relay_account_paused", map[string]string{"account": sandboxtest.Revoked, "reason": reason}))
		}
		return paused
	}
	testutil.Eventually(t, ctx, "the token state gauge, the paused gauge and the dead letters' count", func() bool {
		return metric("relay_token_state", map[string]string{"account": sandboxtest.Revoked, "state": "needs_consent"}) >= 1 &&
			revokedPaused() >= 1 &&
			metric("relay_messages_total", map[string]string{"account": sandbox.Account, "outcome": "dead_lettered"}) >= sandboxtest.Invalid
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"relay_dlq_messages", map[string]string{"account": sandbox.Account}, sandboxtest.Invalid},
		{"relay_dlq_messages", map[string]string{"account": "unknown"}, 1},
		{"relay_queue_pending", map[string]string{"account": "unknown"}, 0},
		{"relay_queue_pending", map[string]string{"account": sandbox.Account}, 0},
		{"relay_queue_ack_pending", map[string]string{"account": sandbox.Account}, 0},
		{"relay_account_paused", map[string]string{"account": sandbox.Account, "reason": "none"}, 0},
		// At 0 from the lane's start, so the alert's increase() sees the
		// first mismatch.
		{"relay_account_binding_mismatch_total", map[string]string{"account": sandbox.Account}, 0},
		{"relay_account_binding_mismatch_total", map[string]string{"account": sandboxtest.Revoked}, 0},
		{"relay_messages_total", map[string]string{"account": sandbox.Account, "outcome": "sent"}, sandboxtest.Sent},
		{"relay_messages_total", map[string]string{"account": sandbox.Account, "outcome": "retried"}, 1},
		{"relay_messages_total", map[string]string{"account": sandbox.Account, "outcome": "dead_lettered"}, sandboxtest.Invalid},
		{"relay_token_state", map[string]string{"account": sandboxtest.Revoked, "state": "needs_consent"}, 1},
		{"relay_build_info", map[string]string{"goversion": runtime.Version()}, 1},
		// The SMTP front door: the last good message, the wrong password,
		// the producer without a connected account; no connection refused.
		{"relay_ingress_messages_total", map[string]string{"producer": sandbox.Producer, "result": "accepted"}, 1},
		{"relay_ingress_messages_total", map[string]string{"producer": sandboxtest.Misconfigured, "result": "unavailable"}, 1},
		{"relay_ingress_auth_failures_total", map[string]string{"reason": "bad_credentials"}, 1},
		{"relay_ingress_auth_failures_total", map[string]string{"reason": "locked_out"}, 0},
		{"relay_ingress_refused_connections_total", nil, 0},
	} {
		if got := metric(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The revoked account: one series, paused for a reason, its message
	// waiting (not yet fetched, or fetched and put back).
	if paused := revokedPaused(); paused != 1 || metric("relay_account_paused", map[string]string{"account": sandboxtest.Revoked, "reason": "none"}) != -1 {
		t.Errorf("relay_account_paused for %s: want one series with value 1 and its reason", sandboxtest.Revoked)
	}
	if q := metric("relay_queue_pending", map[string]string{"account": sandboxtest.Revoked}) +
		metric("relay_queue_ack_pending", map[string]string{"account": sandboxtest.Revoked}); q != 1 {
		t.Errorf("queued for %s: %v, want 1", sandboxtest.Revoked, q)
	}
	if n := metric("relay_smtp_sessions", map[string]string{"account": sandbox.Account}); n < 0 || n > 3 {
		t.Errorf("relay_smtp_sessions{account=sandbox} = %v", n)
	}

	// /status for a browser: the page, every account and its state, the
	// remedy for the revoked one; JSON stays the default for scripts.
	page := getStatus(t, "http://"+s.Daemon.HTTPAddr+"/status", "text/html,application/xhtml+xml,*/*;q=0.8", "text/html; charset=utf-8")
	for _, want := range []string{
		`id="account-sandbox"`, sandbox.Mailbox, `id="account-billing"`, sandboxtest.RevokedMailbox,
		s.Fake.SMTPAddr(), "OAuth2 delegated (XOAUTH2)", `class="state healthy"`, `class="state needs_consent"`,
		"AADSTS50173", "Remedy: ", "authtool login --account billing", "paused: ",
		`id="dlq-size">Dead letters<b>2</b>`, `id="queue-depth">Queue depth<b>1</b>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("HTML /status lacks %q", want)
		}
	}
	if body := getStatus(t, "http://"+s.Daemon.HTTPAddr+"/status", "*/*", "application/json"); !strings.HasPrefix(body, "{") {
		t.Errorf("/status for */* is not JSON: %.80s", body)
	}
	if body := getStatus(t, "http://"+s.Daemon.HTTPAddr+"/status?format=html", "", "text/html; charset=utf-8"); !strings.Contains(body, `id="account-billing"`) {
		t.Error("/status?format=html is not the page")
	}
	assertNoSecrets(t, s, logs.String()+page)
}

func getStatus(t *testing.T, url, accept, wantType string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != wantType {
		t.Fatalf("GET %s (Accept %q): %d %s", url, accept, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return string(b)
}
