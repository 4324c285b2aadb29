package deploy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
)

// root is the repository root (tests run in deploy/).
const root = ".."

func path(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }

func readYAML(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(path(rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// compose is the part of the Compose specification the checks read.
type compose struct {
	Services map[string]struct {
		Image       string         `yaml:"image"`
		Build       any            `yaml:"build"`
		Command     any            `yaml:"command"`
		Profiles    []string       `yaml:"profiles"`
		Ports       []string       `yaml:"ports"`
		Volumes     []string       `yaml:"volumes"`
		Secrets     []string       `yaml:"secrets"`
		Environment map[string]any `yaml:"environment"`
		DependsOn   any            `yaml:"depends_on"`
		Entrypoint  []string       `yaml:"entrypoint"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		Deploy struct {
			Resources struct {
				Limits struct {
					CPUs   string `yaml:"cpus"`
					Memory string `yaml:"memory"`
				} `yaml:"limits"`
			} `yaml:"resources"`
		} `yaml:"deploy"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
	Secrets map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

// Dashboard is the part of a Grafana dashboard the checks read.
type Dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Datasource struct{ UID string }
		} `json:"list"`
	} `json:"templating"`
	Panels []Panel `json:"panels"`
}

// Panel is one dashboard panel.
type Panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func readDashboard(t testing.TB) Dashboard {
	t.Helper()
	b, err := os.ReadFile(path("deploy/grafana/dashboards/relay.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d Dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("relay.json: %v", err)
	}
	return d
}

// Rules is an alert rules file.
type Rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []Rule `yaml:"rules"`
	} `yaml:"groups"`
}

// Rule is one alerting rule.
type Rule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(t testing.TB) []Rule {
	t.Helper()
	var f Rules
	readYAML(t, "deploy/prometheus/alerts.yml", &f)
	var out []Rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// The compose file parses, has the services the README promises with an
// image or a build each, declares its named volumes, binds its ports to
// localhost, and every file or directory it mounts exists.
func TestComposeFile(t *testing.T) {
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	for _, name := range []string{"nats", "relay-setup", "relay-keygen", "authtool", "relay-tokens", "relay-worker", "sandbox", "prometheus", "grafana", "alertmanager"} {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("service %s missing", name)
			continue
		}
		if (s.Image == "") == (s.Build == nil) {
			t.Errorf("service %s: want exactly one of image and build", name)
		}
	}
	if p := c.Services["sandbox"].Profiles; !slices.Contains(p, "sandbox") {
		t.Errorf("sandbox service profiles %v, want the sandbox profile", p)
	}
	if _, err := os.Stat(path("Dockerfile")); err != nil {
		t.Error("services build . but there is no Dockerfile")
	}
	mounts := map[string]string{} // container path -> host path
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %s beyond localhost", name, p)
			}
		}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("service %s: volume %q: want source:target", name, v)
				continue
			}
			src, dst := parts[0], parts[1]
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(path(src)); err != nil {
					t.Errorf("service %s mounts %s, which does not exist", name, src)
				}
				mounts[dst] = filepath.ToSlash(filepath.Clean(src))
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s uses volume %s, not declared under volumes:", name, src)
			}
		}
		for _, sec := range s.Secrets {
			if _, ok := c.Secrets[sec]; !ok {
				t.Errorf("service %s uses secret %s, not declared under secrets:", name, sec)
			}
		}
	}

	// Prometheus: its config and rules are mounted where the config says.
	var prom struct {
		RuleFiles []string `yaml:"rule_files"`
		Alerting  struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "deploy/prometheus/prometheus.yml", &prom)
	if mounts["/etc/prometheus/prometheus.yml"] != "deploy/prometheus/prometheus.yml" {
		t.Errorf("prometheus does not mount deploy/prometheus/prometheus.yml at /etc/prometheus/prometheus.yml: %v", mounts)
	}
	for _, rf := range prom.RuleFiles {
		if mounts["/etc/prometheus/"+rf] != "deploy/prometheus/"+rf {
			t.Errorf("rule file %s is not mounted beside the config", rf)
		}
	}
	targets := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = true
				host, _, _ := strings.Cut(tg, ":")
				if _, ok := c.Services[host]; !ok && host != "localhost" {
					t.Errorf("scrape target %s is no compose service", tg)
				}
			}
		}
	}
	// Prometheus sends its alerts to the compose Alertmanager: without an
	// alerting block the rules fire on /alerts only and nobody is mailed.
	var ams []string
	for _, am := range prom.Alerting.Alertmanagers {
		for _, st := range am.StaticConfigs {
			ams = append(ams, st.Targets...)
		}
	}
	if !slices.Contains(ams, "alertmanager:9093") || !slices.Contains(c.Services["alertmanager"].Ports, "127.0.0.1:9093:9093") {
		t.Errorf("Prometheus sends alerts to %v, want the alertmanager service on its port 9093 (ports %v)", ams, c.Services["alertmanager"].Ports)
	}
	for _, svc := range []string{"relay-tokens", "relay-worker", "sandbox"} {
		if !targets[svc+":9465"] {
			t.Errorf("Prometheus does not scrape %s:9465", svc)
		}
		if cmd, _ := json.Marshal(c.Services[svc].Command); !strings.Contains(string(cmd), `"--http-addr","0.0.0.0:9465"`) {
			t.Errorf("service %s does not serve /metrics on 0.0.0.0:9465: %s", svc, cmd)
		}
	}

	// Grafana: provisioning and dashboards mounted where the provider
	// looks, the datasource is the compose Prometheus, and the dashboard
	// uses the provisioned datasource.
	if mounts["/var/lib/grafana/dashboards"] != "deploy/grafana/dashboards" {
		t.Errorf("grafana does not mount deploy/grafana/dashboards: %v", mounts)
	}
	for _, dir := range []string{"datasources", "dashboards"} {
		if mounts["/etc/grafana/provisioning/"+dir] != "deploy/grafana/provisioning/"+dir {
			t.Errorf("grafana does not mount deploy/grafana/provisioning/%s", dir)
		}
	}
	var provider struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "deploy/grafana/provisioning/dashboards/relay.yml", &provider)
	if len(provider.Providers) != 1 || provider.Providers[0].Options.Path != "/var/lib/grafana/dashboards" {
		t.Errorf("dashboard provider %+v, want path /var/lib/grafana/dashboards", provider)
	}
	var ds struct {
		Datasources []struct {
			UID, Type, URL string
		} `yaml:"datasources"`
	}
	readYAML(t, "deploy/grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("datasources %+v, want the compose Prometheus", ds)
	}
	d := readDashboard(t)
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue // a section heading: no query, no datasource
		}
		if p.Datasource.UID != "${datasource}" || p.Datasource.Type != ds.Datasources[0].Type {
			t.Errorf("panel %q uses datasource %+v, want the datasource variable of type %s", p.Title, p.Datasource, ds.Datasources[0].Type)
		}
	}
}

// The dashboard shows what the issue lists, every panel has a query, and
// the account variable exists. Rows are section headings: a title, no
// query.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Fatal("dashboard without uid or title")
	}
	if len(d.Templating.List) != 2 || d.Templating.List[0].Name != "datasource" || d.Templating.List[1].Name != "account" {
		t.Errorf("want two variables, datasource and account: %+v", d.Templating.List)
	}
	ids := map[int]bool{}
	all := ""
	var rows []string
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			rows = append(rows, p.Title)
			if len(p.Targets) != 0 || p.GridPos.W != 24 {
				t.Errorf("row %q: want a full-width heading without queries", p.Title)
			}
			continue
		}
		if p.GridPos.W == 0 || p.GridPos.H == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %q: no size or no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s: empty expression", p.Title, tg.RefID)
			}
			all += tg.Expr + "\n"
		}
	}
	for _, want := range []string{
		"relay_messages_total", "relay_smtp_replies_total", "histogram_quantile(0.5,", "histogram_quantile(0.95,",
		"histogram_quantile(0.99,", "relay_queue_pending", "relay_dlq_messages", "relay_token_expiry_timestamp_seconds",
		"relay_token_state", "relay_pacing_wait_seconds", `account=~"$account"`,
		"relay_ingress_messages_total", "relay_ingress_auth_failures_total", "relay_ingress_sessions",
		"relay_ingress_refused_connections_total",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
	if !slices.Contains(rows, "SMTP front door") {
		t.Errorf("no row \"SMTP front door\" (rows: %q)", rows)
	}
}

// The alert rules the issue asks for exist, each with a severity and a
// summary.
func TestAlertRules(t *testing.T) {
	rules := readRules(t)
	names := map[string]bool{}
	for _, r := range rules {
		names[r.Alert] = true
		if r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("rule %s: want expr, severity and summary", r.Alert)
		}
	}
	for _, want := range []string{
		"RelayTokenExpiringWithoutRefresh", "RelayTokenRefreshFailing", "RelayAccountNeedsConsent",
		"RelayAccountBindingMismatch", "RelayDLQGrowing", "RelayQueueBacklogGrowing", "RelayNoSendsWhileQueued",
		"RelayIngressAuthFailures", "RelayIngressRefusingMail", "RelayQueueUnreadable", "RelayTokenRecordUnreadable",
	} {
		if !names[want] {
			t.Errorf("no alert %s", want)
		}
	}
}

// TestComposeUsesTheRoles: NATS in compose loads deploy/nats/auth.conf
// (nats-server itself parses nats.conf, include and all), and each relay
// service connects as the user of its role, no service as a user with
// more than it needs; the token key goes only to the token service.
func TestComposeUsesTheRoles(t *testing.T) {
	for _, v := range []string{"RELAY_PRODUCER_PASSWORD", "RELAY_WORKER_PASSWORD", "RELAY_TOKENS_PASSWORD", "RELAY_ADMIN_PASSWORD"} {
		t.Setenv(v, "pw")
	}
	opts, err := server.ProcessConfigFile(path("deploy/nats/nats.conf"))
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	if len(opts.Users) != 4 || !opts.JetStream || !opts.SyncAlways {
		t.Fatalf("nats.conf: %d users, JetStream %v, sync always %v; want auth.conf's four users, JetStream synced before every ack", len(opts.Users), opts.JetStream, opts.SyncAlways)
	}
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	for svc, want := range map[string]struct{ user, roles string }{
		"relay-setup":  {"relay-admin", ""},
		"relay-tokens": {"relay-tokens", "tokens"},
		"relay-worker": {"relay-worker", "workers"},
	} {
		s := c.Services[svc]
		if got := s.Environment["RELAY_NATS_USER"]; got != want.user {
			t.Errorf("%s connects as %v, want %s", svc, got, want.user)
		}
		cmd, _ := json.Marshal(s.Command)
		if want.roles != "" && !strings.Contains(string(cmd), `"--roles","`+want.roles+`"`) {
			t.Errorf("%s runs %s, want --roles %s", svc, cmd, want.roles)
		}
		if hasKey := slices.Contains(s.Volumes, "relay-key:/var/lib/relay/key:ro"); hasKey != (svc == "relay-tokens") {
			t.Errorf("%s has the token key: %v (only the token service needs it)", svc, hasKey)
		}
	}
}

// TestComposeStartsCleanly: the long-running services have resource
// limits; NATS and both relays have health checks (the relays through
// relay health, the image having no curl) and what depends on them waits
// for service_healthy; the key is made in the image into the relay-key
// volume and authtool runs from the same image with it; Alertmanager
// mails through the relay worker's SMTP listener with a password file;
// images are pinned to an exact tag, NATS to the minor version of the
// nats-server in go.mod.
func TestComposeStartsCleanly(t *testing.T) {
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	for _, name := range []string{"nats", "relay-tokens", "relay-worker", "prometheus", "grafana", "alertmanager"} {
		l := c.Services[name].Deploy.Resources.Limits
		if l.CPUs == "" || l.Memory == "" {
			t.Errorf("service %s has no cpu and memory limits", name)
		}
	}
	for _, name := range []string{"relay-tokens", "relay-worker"} {
		hc := c.Services[name].Healthcheck
		if hc == nil || !slices.Equal(hc.Test, []string{"CMD", "/usr/local/bin/relay", "health"}) {
			t.Errorf("service %s: healthcheck %+v, want relay health", name, hc)
		}
	}
	if hc := c.Services["nats"].Healthcheck; hc == nil {
		t.Error("nats has no healthcheck")
	}
	dependsHealthy := func(svc, on string) {
		t.Helper()
		m, _ := c.Services[svc].DependsOn.(map[string]any)
		d, _ := m[on].(map[string]any)
		if d["condition"] != "service_healthy" {
			t.Errorf("%s depends on %s with %v, want condition service_healthy", svc, on, m[on])
		}
	}
	dependsHealthy("relay-setup", "nats")
	dependsHealthy("relay-worker", "relay-tokens")
	dependsHealthy("alertmanager", "relay-worker")

	if cmd, _ := json.Marshal(c.Services["relay-keygen"].Command); string(cmd) != `["keygen","--out","/var/lib/relay/key/token.key"]` {
		t.Errorf("relay-keygen runs %s", cmd)
	}
	for _, svc := range []string{"relay-keygen", "authtool"} {
		if !slices.Contains(c.Services[svc].Profiles, "tools") || !slices.ContainsFunc(c.Services[svc].Volumes, func(v string) bool { return strings.HasPrefix(v, "relay-key:/var/lib/relay/key") }) {
			t.Errorf("%s: want profile tools and the relay-key volume", svc)
		}
	}
	if ep := c.Services["authtool"].Entrypoint; !slices.Equal(ep, []string{"/usr/local/bin/authtool"}) {
		t.Errorf("authtool entrypoint %v", ep)
	}
	if c.Services["relay-tokens"].Environment["RELAY_KEY_FILE"] != "/var/lib/relay/key/token.key" {
		t.Error("relay-tokens does not read the key from the relay-key volume")
	}

	// Alertmanager: mounted config, smarthost = the worker's SMTP listener.
	if !slices.Contains(c.Services["alertmanager"].Volumes, "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro") {
		t.Error("alertmanager does not mount deploy/alertmanager/alertmanager.yml")
	}
	var am struct {
		Global struct {
			Smarthost    string `yaml:"smtp_smarthost"`
			User         string `yaml:"smtp_auth_username"`
			PasswordFile string `yaml:"smtp_auth_password_file"`
			RequireTLS   bool   `yaml:"smtp_require_tls"`
		} `yaml:"global"`
	}
	readYAML(t, "deploy/alertmanager/alertmanager.yml", &am)
	listen, _ := c.Services["relay-worker"].Environment["RELAY_SMTP_LISTEN"].(string)
	_, port, _ := strings.Cut(listen, ":")
	if am.Global.Smarthost != "relay-worker:"+port || port == "" {
		t.Errorf("alertmanager smarthost %q, relay-worker listens on %q", am.Global.Smarthost, listen)
	}
	if am.Global.User == "" || !strings.HasPrefix(am.Global.PasswordFile, "/run/secrets/") || !am.Global.RequireTLS {
		t.Errorf("alertmanager SMTP auth %+v: want a user, a password file from a secret, TLS", am.Global)
	}
	if !slices.Contains(c.Services["alertmanager"].Secrets, strings.TrimPrefix(am.Global.PasswordFile, "/run/secrets/")) {
		t.Errorf("alertmanager does not get the secret %s", am.Global.PasswordFile)
	}

	// Exact image tags; NATS at the embedded server's minor version.
	for name, s := range c.Services {
		if s.Image != "" && (!strings.Contains(s.Image, ":") || strings.HasSuffix(s.Image, ":latest")) {
			t.Errorf("service %s image %s is not pinned to a tag", name, s.Image)
		}
	}
	gomod, err := os.ReadFile(path("go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var minor string
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "github.com/nats-io/nats-server/v2" {
			parts := strings.Split(strings.TrimPrefix(f[1], "v"), ".")
			minor = parts[0] + "." + parts[1] + "."
		}
	}
	if img := c.Services["nats"].Image; minor == "" || !strings.HasPrefix(img, "nats:"+minor) {
		t.Errorf("nats image %s, want the minor version %s of go.mod's nats-server", img, minor)
	}

	// The image: health check through relay health, metrics on the
	// container's interface, the relay's user.
	df, err := os.ReadFile(path("Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`CMD ["/usr/local/bin/relay", "health"]`, "ENV RELAY_HTTP_ADDR=:9465", "USER 65532:65532", "--chown=65532:65532"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile has no %s", want)
		}
	}
}

// TestRunbook: every alert has a runbook_url pointing at a section of
// docs/runbook.md that exists (a "## Name" heading: GitHub's anchor is
// the name in lower case), every section is an alert, and no rule picks
// relays by a job name (operators name their jobs).
func TestRunbook(t *testing.T) {
	b, err := os.ReadFile(path("docs/runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors[strings.ToLower(strings.TrimSpace(h))] = true
		}
	}
	alerts := map[string]bool{}
	for _, r := range readRules(t) {
		alerts[strings.ToLower(r.Alert)] = true
		doc, anchor, _ := strings.Cut(r.Annotations["runbook_url"], "#")
		if !strings.HasSuffix(doc, "docs/runbook.md") || !anchors[anchor] || anchor != strings.ToLower(r.Alert) {
			t.Errorf("alert %s: runbook_url %q, want docs/runbook.md#%s with that section present", r.Alert, r.Annotations["runbook_url"], strings.ToLower(r.Alert))
		}
		if strings.Contains(r.Expr, "job=") || strings.Contains(r.Expr, "job =") {
			t.Errorf("alert %s selects a job: %s", r.Alert, r.Expr)
		}
	}
	for a := range anchors {
		if !alerts[a] {
			t.Errorf("runbook section %q is no alert", a)
		}
	}
}

// TestDashboardDatasourceVariable: the dashboard works in a Grafana whose
// Prometheus has any uid: a variable "datasource" of type datasource
// (query prometheus) that every panel, every query and the account
// variable use, __inputs for the import dialog, and no datasource uid
// written into the file.
func TestDashboardDatasourceVariable(t *testing.T) {
	b, err := os.ReadFile(path("deploy/grafana/dashboards/relay.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Inputs []struct {
			Name, Type, PluginID string
		} `json:"__inputs"`
		Templating struct {
			List []struct {
				Name, Type string
				Query      any
				Datasource *struct{ Type, UID string }
			}
		}
		Panels []struct {
			Title      string
			Type       string
			Datasource *struct{ Type, UID string }
			Targets    []struct {
				RefID      string
				Datasource *struct{ Type, UID string }
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs %+v, want DS_PROMETHEUS, a prometheus datasource", d.Inputs)
	}
	uses := func(what string, ds *struct{ Type, UID string }) {
		t.Helper()
		if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want {prometheus ${datasource}}", what, ds)
		}
	}
	found := false
	for _, v := range d.Templating.List {
		switch {
		case v.Name == "datasource":
			found = v.Type == "datasource" && v.Query == "prometheus"
		case v.Type == "query":
			uses("variable "+v.Name, v.Datasource)
		}
	}
	if !found {
		t.Error("no variable datasource of type datasource with query prometheus")
	}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		uses("panel "+p.Title, p.Datasource)
		for _, tg := range p.Targets {
			uses("panel "+p.Title+" target "+tg.RefID, tg.Datasource)
		}
	}
	if strings.Contains(string(b), `"uid": "prometheus"`) {
		t.Error("the dashboard names the datasource uid prometheus")
	}
}

// TestRunbookCommands: the compose services, Deployments and pod labels
// the runbook's docker compose and kubectl commands name exist, and a
// container the runbook runs relay dlq or relay producer in (or any relay
// command, when it names none) connects to NATS as relay-admin: those
// commands reply on the admin's inbox and read MAIL_DLQ and
// relay_producers, which NATS refuses to the worker's and token
// service's users.
func TestRunbookCommands(t *testing.T) {
	b, err := os.ReadFile(path("docs/runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	objs := manifests(t)
	adminOnly := func(sub string) bool { return sub == "" || sub == "dlq" || sub == "producer" }

	compose := regexp.MustCompile(`docker\s+compose\s+(?:exec|run\s+--rm(?:\s+--entrypoint\s+relay)?)\s+([a-z][a-z0-9-]*)(?:\s+relay)?(?:\s+([a-z]+))?`)
	found := 0
	for _, m := range compose.FindAllStringSubmatch(text, -1) {
		found++
		svc, sub := m[1], m[2]
		s, ok := c.Services[svc]
		if !ok {
			t.Errorf("runbook: %q names no compose service", m[0])
			continue
		}
		if user := s.Environment["RELAY_NATS_USER"]; adminOnly(sub) && user != "relay-admin" {
			t.Errorf("runbook: %q runs relay commands as NATS user %v; relay dlq and relay producer need relay-admin", m[0], user)
		}
	}
	kubectl := regexp.MustCompile("kubectl[^`]*")
	deployRE := regexp.MustCompile(`\bdeploy/([a-z0-9-]+)(\s+--\s+relay(?:\s+([a-z]+))?)?`)
	labelRE := regexp.MustCompile(`-l\s+([a-z0-9./-]+)=([a-z0-9.-]+)`)
	for _, cmd := range kubectl.FindAllString(text, -1) {
		found++
		for _, m := range deployRE.FindAllStringSubmatch(cmd, -1) {
			d, ok := objs["Deployment/"+m[1]].(*appsv1.Deployment)
			if !ok {
				t.Errorf("runbook: %q names no Deployment in deploy/kubernetes", cmd)
				continue
			}
			user := ""
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				if e.Name == "RELAY_NATS_USER" {
					user = e.Value
				}
			}
			if m[2] != "" && adminOnly(m[3]) && user != "relay-admin" {
				t.Errorf("runbook: %q runs relay commands as NATS user %q; relay dlq and relay producer need relay-admin", cmd, user)
			}
		}
		for _, m := range labelRE.FindAllStringSubmatch(cmd, -1) {
			matched := false
			for _, pod := range podTemplates(objs) {
				matched = matched || pod.Labels[m[1]] == m[2]
			}
			if !matched {
				t.Errorf("runbook: %q selects no pod (no workload's pods have %s=%s)", cmd, m[1], m[2])
			}
		}
	}
	if found == 0 {
		t.Error("runbook: no docker compose or kubectl command found; this test reads nothing")
	}
}

// TestEveryAlertIsTested: prometheus/alerts_test.yml (run by promtool in
// the integration test) has, for every rule in alerts.yml, a case where
// it fires and one where it stays silent, so each alert is shown to fire
// under the condition it claims and not before (a rule without a case
// could never fire, and nothing would say so).
func TestEveryAlertIsTested(t *testing.T) {
	var f struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				EvalTime  string           `yaml:"eval_time"`
				AlertName string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, "deploy/prometheus/alerts_test.yml", &f)
	if !slices.Equal(f.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("alerts_test.yml tests %v, want alerts.yml", f.RuleFiles)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				silent[a.AlertName] = true
			}
		}
	}
	for _, r := range readRules(t) {
		if !fires[r.Alert] {
			t.Errorf("alert %s: no case in alerts_test.yml where it fires", r.Alert)
		}
		if !silent[r.Alert] {
			t.Errorf("alert %s: no case in alerts_test.yml where it stays silent", r.Alert)
		}
	}
}

// TestComposeRelaysAreConfined: the long-running relays in compose get
// what the Kubernetes manifests give them: a read-only root filesystem
// (with an external NATS server and a certificate given, relay serve
// writes nothing locally), no capabilities (uid 65532 binds 2525 and
// 9465 without any) and no privilege gain through setuid binaries.
func TestComposeRelaysAreConfined(t *testing.T) {
	var c struct {
		Services map[string]struct {
			ReadOnly    bool     `yaml:"read_only"`
			CapDrop     []string `yaml:"cap_drop"`
			CapAdd      []string `yaml:"cap_add"`
			SecurityOpt []string `yaml:"security_opt"`
			Privileged  bool     `yaml:"privileged"`
		} `yaml:"services"`
	}
	readYAML(t, "docker-compose.yml", &c)
	for _, name := range []string{"relay-tokens", "relay-worker"} {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("no compose service %s", name)
		}
		if !s.ReadOnly {
			t.Errorf("%s: root filesystem writable (want read_only: true)", name)
		}
		if !slices.Contains(s.CapDrop, "ALL") || len(s.CapAdd) > 0 || s.Privileged {
			t.Errorf("%s: cap_drop %v, cap_add %v, privileged %v; want cap_drop [ALL] and nothing added", name, s.CapDrop, s.CapAdd, s.Privileged)
		}
		if !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: security_opt %v, want no-new-privileges:true", name, s.SecurityOpt)
		}
	}
}
