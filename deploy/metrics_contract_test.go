package deploy_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"relay365/internal/queue"
	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
)

// scraped is one real /metrics scrape: each series name (a histogram's
// _bucket, _sum and _count separately) with its label names and the
// values each label had.
type scraped map[string]map[string]map[string]bool

func scrapeMetrics(t *testing.T, ctx context.Context, addr string) scraped {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s: %s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := scraped{}
	add := func(name string, labels []*dto.LabelPair, extra ...string) {
		if out[name] == nil {
			out[name] = map[string]map[string]bool{}
		}
		for _, l := range labels {
			if out[name][l.GetName()] == nil {
				out[name][l.GetName()] = map[string]bool{}
			}
			out[name][l.GetName()][l.GetValue()] = true
		}
		for _, e := range extra {
			if out[name][e] == nil {
				out[name][e] = map[string]bool{}
			}
		}
	}
	for name, f := range fams {
		for _, m := range f.Metric {
			if f.GetType() == dto.MetricType_HISTOGRAM {
				add(name, m.Label) // as documents name it
				add(name+"_bucket", m.Label, "le")
				add(name+"_sum", m.Label)
				add(name+"_count", m.Label)
				continue
			}
			add(name, m.Label)
		}
	}
	return out
}

func (s scraped) labelNames(name string) []string {
	var out []string
	for l := range s[name] {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// targetLabels are added by Prometheus to every series it scrapes.
var targetLabels = map[string]bool{"job": true, "instance": true}

// unexercised are label values the code exports that the sandbox's
// exercise does not reach (a full MAIL stream, an expired message, a
// refusal by the connection limits); expressions may name them.
var unexercised = map[string][]string{
	"relay_ingress_messages_total": {"full", "too_large", "not_allowed", "invalid"},
	"relay_messages_total":         {"duplicate", "requeued", "deferred"},
	"relay_token_refresh_total":    {"config_error", "transient"},
	"relay_account_paused":         {"config", "account", "tenant", "quota", "auth"},
}

// freeLabels take values from configuration (account and producer
// names, build facts) or from the SMTP server (reply codes): their
// values in a synthetic series need not match the scrape's.
var freeLabels = map[string]bool{"account": true, "producer": true, "code": true, "version": true, "revision": true, "goversion": true, "le": true, "job": true, "instance": true}

var (
	seriesRE  = regexp.MustCompile(`\b(relay_[a-z_]+|up)\b(\{[^}]*\})?`)
	matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	groupRE   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	// Names of KV buckets and other relay_ words that are not metrics.
	notMetrics = map[string]bool{"relay_accounts": true, "relay_tokens": true, "relay_bodies": true, "relay_pacing": true,
		"relay_producers": true, "relay_sent": true, "relay_workers": true}
)

// metricsIn is every relay_ metric an expression reads.
func metricsIn(expr string) []string {
	var out []string
	for _, m := range seriesRE.FindAllStringSubmatch(expr, -1) {
		if m[1] != "up" && !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// closing returns the index just past the parenthesis that closes the
// one at open.
func closing(s string, open int) int {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return len(s)
}

// checkExpr checks one PromQL expression against the scrape: every
// relay_ metric it reads exists, every label it matches on, groups by or
// joins on is a label of the metrics concerned, and every value it
// matches is one the relay exports.
func checkExpr(t *testing.T, s scraped, where, expr string) {
	t.Helper()
	for _, m := range seriesRE.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		if name == "up" {
			continue
		}
		labels, ok := s[name]
		if !ok {
			t.Errorf("%s: reads %s, which the relay does not export: %s", where, name, expr)
			continue
		}
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			label, op, value := mm[1], mm[2], mm[3]
			if targetLabels[label] {
				continue
			}
			values, ok := labels[label]
			if !ok {
				t.Errorf("%s: matches %s on label %q; its labels are %v", where, name, label, s.labelNames(name))
				continue
			}
			if freeLabels[label] || value == ".*" || value == "" {
				continue
			}
			known := func(v string) bool {
				return values[v] || slices.Contains(unexercised[name], v)
			}
			alts := []string{value}
			if op == "=~" || op == "!~" {
				alts = strings.Split(value, "|")
			}
			for _, a := range alts {
				if !known(a) {
					t.Errorf("%s: matches %s{%s%s%q}, but %s is not a value the relay exports for %s (seen: %v)", where, name, label, op, value, a, label, keys(values))
				}
			}
		}
	}
	for _, loc := range groupRE.FindAllStringSubmatchIndex(expr, -1) {
		kind := expr[loc[2]:loc[3]]
		var labels []string
		for _, l := range strings.Split(expr[loc[4]:loc[5]], ",") {
			if l = strings.TrimSpace(l); l != "" && !targetLabels[l] {
				labels = append(labels, l)
			}
		}
		scope := expr // on, ignoring, group_*: both sides of the operator
		if kind == "by" || kind == "without" {
			// The aggregation's argument: the parenthesis after the clause.
			if open := strings.IndexByte(expr[loc[1]:], '('); open >= 0 {
				open += loc[1]
				scope = expr[open:closing(expr, open)]
			}
		}
		for _, name := range metricsIn(scope) {
			if _, ok := s[name]; !ok {
				continue // reported above
			}
			for _, l := range labels {
				if _, ok := s[name][l]; !ok {
					t.Errorf("%s: %s (%s) on %s, which has no label %q (its labels: %v): %s", where, kind, strings.Join(labels, ", "), name, l, s.labelNames(name), expr)
				}
			}
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// documentedRE finds a metric written with its label names,
// relay_x_total{account,outcome}, in the README.
var documentedRE = regexp.MustCompile("`(relay_[a-z_]+)(\\{([a-z_,]*)\\})?`")

// TestMetricsContract starts the sandbox in process (the daemon whole,
// an embedded nats-server, the fake Office 365), makes it send, retry,
// dead-letter, pause an account, refuse a producer and an AUTH, then
// scrapes /metrics and checks every place an operator reads metrics
// from against that scrape: the alert rules, the promtool tests'
// synthetic series, the Grafana dashboard, the runbook and the metrics
// the README and design document list with their labels. A metric
// renamed, a label dropped or added, or a label value changed in the
// code without the rules following fails here, without Prometheus.
//
// It also checks that labels stay bounded: mail for an alias nobody
// registered and an AUTH attempt with an invented user name do not
// become label values.
func TestMetricsContract(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, _ := sandboxtest.Start(t, t.TempDir())
	sandboxtest.Exercise(t, ctx, s, nil)

	// Invented names: an alias that is no account, a user that is no
	// producer. Neither may become a label value.
	const strayAlias, strayUser = "stray-alias-4711", "stray-user-4711"
	if _, err := queue.Publish(ctx, s.Daemon.JS, strayAlias, "stray-1", []byte(`{"account":"`+strayAlias+`","to":["ops@contoso.com"],"subject":"x","text":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if err := sandboxtest.SubmitSMTP(ctx, s, strayUser, "guess", "a@example.org", "Subject: x\r\n\r\nx\r\n"); err == nil {
		t.Fatal("AUTH as an unknown user succeeded")
	}

	// A field the relay does not know (relay_message_unknown_fields_total).
	if _, err := queue.Publish(ctx, s.Daemon.JS, sandbox.Account, "unknown-field", []byte(`{"account":"`+sandbox.Account+`","to":["ops@contoso.com"],"subject":"x","text":"x","colour":"red"}`)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the unknown field counted", func() bool {
		_, ok := scrapeMetrics(t, ctx, s.Daemon.HTTPAddr)["relay_message_unknown_fields_total"]
		return ok
	})
	m := scrapeMetrics(t, ctx, s.Daemon.HTTPAddr)

	t.Run("bounded labels", func(t *testing.T) {
		for name, labels := range m {
			for l, values := range labels {
				for v := range values {
					if strings.Contains(v, "4711") || strings.Contains(v, "@") {
						t.Errorf("%s{%s=%q}: a label value from outside the relay's configuration", name, l, v)
					}
				}
			}
		}
		if !m["relay_queue_pending"]["account"]["unknown"] && !m["relay_queue_pending"]["account"][sandbox.Account] {
			t.Errorf("relay_queue_pending accounts %v", keys(m["relay_queue_pending"]["account"]))
		}
	})

	t.Run("alert rules", func(t *testing.T) {
		for _, r := range readRules(t) {
			checkExpr(t, m, "alert "+r.Alert, r.Expr)
			for k, a := range r.Annotations {
				for _, name := range metricsIn(a) {
					if _, ok := m[name]; !ok && !notMetrics[name] {
						t.Errorf("alert %s annotation %s names %s, which the relay does not export", r.Alert, k, name)
					}
				}
			}
		}
	})

	t.Run("promtool input series", func(t *testing.T) {
		var f struct {
			Tests []struct {
				InputSeries []struct {
					Series string `yaml:"series"`
				} `yaml:"input_series"`
			} `yaml:"tests"`
		}
		readYAML(t, "deploy/prometheus/alerts_test.yml", &f)
		for _, tc := range f.Tests {
			for _, in := range tc.InputSeries {
				mm := seriesRE.FindStringSubmatch(in.Series)
				if mm == nil || mm[1] == "up" {
					continue
				}
				name := mm[1]
				checkExpr(t, m, "alerts_test.yml series", in.Series)
				if _, ok := m[name]; !ok {
					continue
				}
				var got []string
				for _, lm := range matcherRE.FindAllStringSubmatch(mm[2], -1) {
					if !targetLabels[lm[1]] {
						got = append(got, lm[1])
					}
				}
				sort.Strings(got)
				if want := m.labelNames(name); !slices.Equal(got, want) {
					t.Errorf("alerts_test.yml: series %s has labels %v, the relay exports %v", in.Series, got, want)
				}
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		vars := strings.NewReplacer("$account", ".*", "$__rate_interval", "1m")
		for _, p := range readDashboard(t).Panels {
			for _, tg := range p.Targets {
				checkExpr(t, m, "panel "+p.Title, vars.Replace(tg.Expr))
			}
		}
	})

	t.Run("documents", func(t *testing.T) {
		for _, doc := range []string{"docs/runbook.md", "README.md", "docs/design.md"} {
			b, err := os.ReadFile(path(doc))
			if err != nil {
				t.Fatal(err)
			}
			for _, mm := range documentedRE.FindAllStringSubmatch(string(b), -1) {
				name := mm[1]
				if notMetrics[name] {
					continue
				}
				if _, ok := m[name]; !ok {
					t.Errorf("%s: names %s, which the relay does not export", doc, name)
					continue
				}
				if mm[2] == "" {
					continue
				}
				got := strings.Split(mm[3], ",")
				sort.Strings(got)
				want := m.labelNames(name)
				if strings.HasSuffix(name, "_bucket") {
					want = slices.DeleteFunc(want, func(l string) bool { return l == "le" })
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: documents %s{%s}; the relay exports labels %v", doc, name, mm[3], want)
				}
			}
		}
	})
}
