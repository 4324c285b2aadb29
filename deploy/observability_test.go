//go:build integration

package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
)

// TestObservabilityEndToEnd runs the sandbox in process on loopback, a
// real Prometheus (Debian's prometheus package) scraping it every second
// with the shipped alert rules, and headless Chromium on the status page.
//
// Traffic and failures come from sandboxtest.Exercise: mail sent (one
// attempt answered 451 and retried, one submitted over SMTP after a
// wrong password), an invalid message dead-lettered, a submission refused
// 451 for a producer without a connected account (here sent twice), a
// second account revoked so it needs consent, is paused and keeps a
// message queued. Prometheus scrapes before, between and after, so
// counters and gauges have samples on both sides of each change.
//
// Then every dashboard panel expression (from relay.json, with $account
// as ".*" and $__rate_interval as 30s) is evaluated through
// /api/v1/query and must return at least one sample that is a number
// (a quantile or ratio over an account without events is NaN; another
// account must give a value). Every alert rule
// expression is evaluated the same way and must be a valid query; the
// rules whose condition the exercise makes true (needs consent, paused,
// refresh failing, DLQ growing, no sends while queued, the front door
// refusing a producer's mail) must return data, and those whose
// condition is false here (relay down or absent, token expiring without
// a refresh, backlog growing, AUTH failures, binding mismatch, …: they
// need a dead scrape target, no relay at all, hours of time, a hundred
// queued messages, a burst of wrong passwords or a rewritten account
// record) must return none,
// and each metric selector in them must exist in Prometheus (so they read
// real series, not typos). Their logic is proven by promtool test rules
// (prometheus/alerts_test.yml), which this test also runs, with promtool
// check config on the config variant it generates. Prometheus's own rule
// evaluation must report every rule healthy, and the needs-consent alert
// must be firing in /api/v1/alerts.
//
// The screenshot and DOM of the status page are kept under
// $RELAY_ARTIFACTS (default: a temporary directory).
func TestObservabilityEndToEnd(t *testing.T) {
	promBin, promtool, chromium := lookPath(t, "prometheus"), lookPath(t, "promtool"), lookPath(t, "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	s, _ := sandboxtest.Start(t, t.TempDir())
	prom := startPrometheus(t, ctx, promBin, promtool, s.Daemon.HTTPAddr)
	prom.waitFor(t, ctx, "a first scrape of the sandbox", `up{job="relay"} == 1`)
	prom.waitFor(t, ctx, "the sandbox's dead-letter gauge at 0", `relay_dlq_messages{account="sandbox"} == 0`)

	sandboxtest.Exercise(t, ctx, s, func() {
		prom.waitFor(t, ctx, "the second account's refresh counters", `relay_token_refresh_total{account="billing",result="needs_consent"} == 0`)
	})
	prom.waitFor(t, ctx, "the dead letter", `relay_dlq_messages{account="sandbox"} == 1`)
	prom.waitFor(t, ctx, "needs_consent", `relay_token_state{account="billing",state="needs_consent"} == 1`)
	prom.waitFor(t, ctx, "the revoked account's refresh failure", `relay_token_refresh_total{account="billing",result="needs_consent"} == 1`)
	prom.waitFor(t, ctx, "the paused account", `relay_account_paused{account="billing"} == 1`)
	// The producer without a connected account tries again: its refusal
	// counter has a sample before the increase, so increase() sees it
	// (the first refusal created the series at 1).
	prom.waitFor(t, ctx, "the refused SMTP submission", `relay_ingress_messages_total{producer="misconfigured",result="unavailable"} == 1`)
	if err := sandboxtest.SubmitSMTP(ctx, s, sandboxtest.Misconfigured, sandboxtest.MisconfiguredPassword, "alertmanager@example.org",
		"Subject: again\r\n\r\nx\r\n"); err == nil || !strings.Contains(err.Error(), "451") {
		t.Fatalf("second submission by the producer without a connected account: %v, want 451", err)
	}
	prom.waitFor(t, ctx, "the second refusal", `relay_ingress_messages_total{producer="misconfigured",result="unavailable"} == 2`)
	// Mail across several scrapes, so rates and latency quantiles have
	// increases to work with: every histogram a panel takes a rate of.
	// (The pacing wait is observed before the send, its duration after:
	// a scrape between the two can put only the duration's increase in
	// the window.)
	at := sendUntil(t, ctx, s, prom, `sum(rate(relay_messages_total{outcome="sent"}[30s])) > 0 and sum(rate(relay_send_duration_seconds_count[30s])) > 0`+
		` and sum(rate(relay_pacing_wait_seconds_count[30s])) > 0`)

	t.Run("dashboard", func(t *testing.T) {
		vars := strings.NewReplacer("$account", ".*", "$__rate_interval", "30s")
		for _, p := range readDashboard(t).Panels {
			for _, tg := range p.Targets {
				expr := vars.Replace(tg.Expr)
				if strings.Contains(expr, "$") {
					t.Errorf("panel %q: unknown variable in %s", p.Title, expr)
					continue
				}
				res := prom.queryAt(t, ctx, expr, at) // the windows sendUntil saw
				if finite(res) == 0 {
					t.Errorf("panel %q target %s returned no data (or only NaN): %s %v", p.Title, tg.RefID, expr, res)
					continue
				}
				t.Logf("panel %q %s: %d series, e.g. %s", p.Title, tg.RefID, len(res), res[0])
			}
		}
	})

	t.Run("alerts", func(t *testing.T) {
		wantData := map[string]bool{
			"RelayAccountNeedsConsent": true, "RelayAccountPaused": true, "RelayTokenRefreshFailing": true,
			"RelayDLQGrowing": true, "RelayNoSendsWhileQueued": true, "RelayIngressRefusingMail": true,
			"RelayDown": false, "RelayTokenExpiringWithoutRefresh": false,
			// The sandbox exports relay_build_info.
			"RelayAbsent": false, "RelayQueueBacklogGrowing": false,
			"RelayIngressAuthFailures": false,
			// No account record is rewritten here; its series exist at 0.
			"RelayAccountBindingMismatch": false,
			// Nothing outlives the queue lifetime here; the counter exists at 0.
			"RelayMessagesExpired": false,
			// NATS answers here; the counter exists at 0.
			"RelayQueueUnreadable": false,
			// Every record opens here; the unreadable series exist at 0.
			"RelayTokenRecordUnreadable": false,
		}
		rules := readRules(t)
		if len(rules) != len(wantData) {
			t.Errorf("%d rules, this test knows %d: say what each should return here", len(rules), len(wantData))
		}
		for _, r := range rules {
			want, known := wantData[r.Alert]
			if !known {
				t.Errorf("rule %s unknown to this test", r.Alert)
				continue
			}
			res := prom.query(t, ctx, r.Expr)
			switch {
			case want && len(res) == 0:
				t.Errorf("alert %s returned no data; want its condition true after the exercise:\n%s", r.Alert, r.Expr)
			case !want && len(res) > 0:
				t.Errorf("alert %s returned %v; want its condition false here", r.Alert, res)
			case want:
				t.Logf("alert %s: returns data: %s", r.Alert, strings.Join(res, "; "))
			}
			for _, sel := range selectors(r.Expr) {
				if len(prom.query(t, ctx, "count("+sel+")")) == 0 {
					t.Errorf("alert %s reads %s, which Prometheus does not have", r.Alert, sel)
				}
			}
			if !want {
				t.Logf("alert %s: condition false here (no data); its selectors %v exist", r.Alert, selectors(r.Expr))
			}
		}
		prom.checkRulesHealthy(t, ctx, len(rules))
		testutil.Eventually(t, ctx, "RelayAccountNeedsConsent firing for billing", func() bool {
			return prom.firing(t, ctx, "RelayAccountNeedsConsent", "billing")
		})
	})

	t.Run("status page in chromium", func(t *testing.T) {
		checkStatusPage(t, ctx, chromium, "http://"+s.Daemon.HTTPAddr+"/status")
	})
}

// selectorRE finds metric selectors: a relay_ metric or up, with optional
// label matchers.
var selectorRE = regexp.MustCompile(`\b(relay_[a-z_]+|up)(\{[^}]*\})?`)

func selectors(expr string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range selectorRE.FindAllString(expr, -1) {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

type promServer struct {
	base string
}

// startPrometheus writes a variant of deploy/prometheus/prometheus.yml
// that scrapes target every second and reads the shipped rules, checks it
// and the rules with promtool, and runs Prometheus on a free loopback
// port until the test ends.
func startPrometheus(t *testing.T, ctx context.Context, bin, promtool, target string) *promServer {
	t.Helper()
	var cfg map[string]any
	readYAML(t, "deploy/prometheus/prometheus.yml", &cfg)
	rules, err := filepath.Abs(path("deploy/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	cfg["rule_files"] = []string{rules}
	delete(cfg, "alerting") // compose's Alertmanager is not here
	cfg["scrape_configs"] = []any{map[string]any{
		"job_name":       "relay", // the job RelayDown watches
		"static_configs": []any{map[string]any{"targets": []string{target}}},
	}}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "prometheus.yml")
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, promtool, "check", "config", cfgFile)
	run(t, ctx, promtool, "test", "rules", path("deploy/prometheus/alerts_test.yml"))

	addr := testutil.FreeAddr(t)
	startServer(t, bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	p := &promServer{base: "http://" + addr}
	waitReady(t, ctx, "prometheus", p.base)
	return p
}

func (p *promServer) api(t *testing.T, ctx context.Context, path string, out any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.base+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Status != "success" {
		t.Fatalf("GET %s: %d %s %s", path, resp.StatusCode, env.Error, b)
	}
	if err := json.Unmarshal(env.Data, out); err != nil {
		t.Fatal(err)
	}
}

// query evaluates expr now and returns its samples as "labels value"; a
// query Prometheus refuses fails the test.
func (p *promServer) query(t *testing.T, ctx context.Context, expr string) []string {
	t.Helper()
	return p.queryAt(t, ctx, expr, time.Time{})
}

// queryAt evaluates expr at a given time (now when zero), so several
// queries can read the same windows.
func (p *promServer) queryAt(t *testing.T, ctx context.Context, expr string, at time.Time) []string {
	t.Helper()
	q := "/api/v1/query?query=" + url.QueryEscape(expr)
	if !at.IsZero() {
		q += "&time=" + strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)
	}
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	p.api(t, ctx, q, &data)
	out := make([]string, len(data.Result))
	for i, r := range data.Result {
		out[i] = fmt.Sprintf("%v %v", r.Metric, r.Value[1])
	}
	return out
}

// finite counts the samples that are numbers (not NaN or ±Inf, which a
// quantile or a ratio over no events gives).
func finite(res []string) int {
	n := 0
	for _, r := range res {
		if !strings.HasSuffix(r, " NaN") && !strings.HasSuffix(r, "Inf") {
			n++
		}
	}
	return n
}

func (p *promServer) waitFor(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	testutil.Eventually(t, ctx, what+" in Prometheus ("+expr+")", func() bool { return len(p.query(t, ctx, expr)) > 0 })
}

// checkRulesHealthy: Prometheus evaluated every rule without error.
func (p *promServer) checkRulesHealthy(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	testutil.Eventually(t, ctx, "every rule evaluated", func() bool {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
					LastEvaluation          time.Time
				} `json:"rules"`
			} `json:"groups"`
		}
		p.api(t, ctx, "/api/v1/rules?type=alert", &data)
		seen := 0
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				if r.Health == "err" {
					t.Fatalf("Prometheus failed to evaluate %s: %s", r.Name, r.LastError)
				}
				if r.Health == "ok" {
					seen++
				}
			}
		}
		return seen == n
	})
}

func (p *promServer) firing(t *testing.T, ctx context.Context, alert, account string) bool {
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	p.api(t, ctx, "/api/v1/alerts", &data)
	for _, a := range data.Alerts {
		if a.Labels["alertname"] == alert && a.Labels["account"] == account && a.State == "firing" {
			return true
		}
	}
	return false
}

// sendUntil sends sandbox mail, one message at a time, until cond holds
// in Prometheus.
//
// It returns the time cond held at: queries evaluated at that time read
// the same windows, however long they take.
func sendUntil(t *testing.T, ctx context.Context, s *sandbox.Sandbox, p *promServer, cond string) time.Time {
	t.Helper()
	for i := 0; ; i++ {
		at := time.Now()
		if len(p.queryAt(t, ctx, cond, at)) > 0 {
			return at
		}
		if ctx.Err() != nil {
			t.Fatalf("%s never held in Prometheus", cond)
		}
		n := len(s.Fake.Messages())
		sandboxtest.Send(t, ctx, s, fmt.Sprint("more-", i))
		if _, err := s.Fake.WaitMessages(ctx, n+1); err != nil {
			t.Fatal(err)
		}
	}
}

// checkStatusPage loads the page in headless Chromium, keeps a screenshot
// and the DOM, and checks the DOM shows each account and its state.
func checkStatusPage(t *testing.T, ctx context.Context, chromium, pageURL string) {
	dir := os.Getenv("RELAY_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "status.png")
	os.Remove(shot)
	common := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900"}
	chrome := func(extra ...string) []byte {
		args := append(append(append([]string{}, common...), "--user-data-dir="+t.TempDir()), extra...)
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, chromium, append(args, pageURL)...)
		var stderr testutil.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.String())
		}
		return out
	}
	chrome("--screenshot=" + shot)
	if st, err := os.Stat(shot); err != nil || st.Size() < 10_000 {
		t.Fatalf("no screenshot (or an empty one) at %s: %v", shot, err)
	}
	dom := chrome("--dump-dom")
	if err := os.WriteFile(filepath.Join(dir, "status.dom.html"), dom, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<title>Relay365 status</title>",
		`id="account-sandbox"`, sandbox.Mailbox, `id="account-billing"`, sandboxtest.RevokedMailbox,
		`class="state healthy">healthy<`, `class="state needs_consent">needs_consent<`,
		"OAuth2 delegated (XOAUTH2)", "authtool login --account billing", `class="paused">paused: `,
	} {
		if !strings.Contains(string(dom), want) {
			t.Errorf("the page in Chromium lacks %q", want)
		}
	}
	t.Logf("status page screenshot: %s", shot)
}
