package relaycmd

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relay365/internal/buildinfo"
	"relay365/internal/daemon"
	"relay365/internal/testutil"
)

// serveFlags is relay serve's flag set, as runServe builds it.
func serveFlags(env Env) *flag.FlagSet {
	fs := newFlags("serve", env)
	var cfg daemon.Config
	var lf logFlags
	daemonFlags(fs, env, &cfg)
	lf.register(fs)
	return fs
}

// TestServeFlagsFromEnvironment: every relay serve flag takes its value
// from RELAY_<FLAG> (dashes as underscores, upper case), the command
// line wins over it, --help names every variable, and a value the flag
// refuses stops serve with a message naming the variable.
func TestServeFlagsFromEnvironment(t *testing.T) {
	all := serveFlags(Env{Stderr: io.Discard, Getenv: func(string) string { return "" }})
	n := 0
	all.VisitAll(func(f *flag.Flag) {
		n++
		name := envName(f.Name)
		// A value the flag accepts and that is not its default.
		var val, want string
		for _, cand := range []string{"17s", "7", "128MiB", "value-from-env"} {
			scratch := serveFlags(Env{Stderr: io.Discard, Getenv: func(string) string { return "" }})
			if scratch.Set(f.Name, cand) == nil && scratch.Lookup(f.Name).Value.String() != f.DefValue {
				val, want = cand, scratch.Lookup(f.Name).Value.String()
				break
			}
		}
		if val == "" {
			t.Errorf("--%s: no test value", f.Name)
			return
		}
		env := Env{Stderr: io.Discard, Getenv: func(k string) string { return map[string]string{name: val}[k] }}
		fs := serveFlags(env)
		if err := flagsFromEnv(fs, env, nil); err != nil {
			t.Errorf("%s=%s: %v", name, val, err)
			return
		}
		if got := fs.Lookup(f.Name).Value.String(); got != want {
			t.Errorf("%s=%s: --%s is %q, want %q", name, val, f.Name, got, want)
		}
	})
	if n < 30 {
		t.Fatalf("only %d serve flags seen", n)
	}

	// The command line wins over the environment.
	env := Env{Stderr: io.Discard, Getenv: func(k string) string { return map[string]string{"RELAY_REPLICAS": "3"}[k] }}
	fs := serveFlags(env)
	if err := flagsFromEnv(fs, env, nil); err != nil {
		t.Fatal(err)
	}
	if err := parse(fs, []string{"--replicas", "5"}); err != nil || fs.Lookup("replicas").Value.String() != "5" {
		t.Errorf("--replicas 5 with RELAY_REPLICAS=3: %v, %s", err, fs.Lookup("replicas").Value)
	}

	// --help lists every variable.
	help := run(t, nil, "", "serve", "--help")
	if help.code != 0 {
		t.Fatalf("serve --help: exit %d", help.code)
	}
	all.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(help.stderr, envName(f.Name)) {
			t.Errorf("serve --help does not name %s", envName(f.Name))
		}
	})

	// A bad value: exit 2, the variable, the value and the flag named.
	for _, kv := range [][2]string{{"RELAY_REPLICAS", "three"}, {"RELAY_ACK_WAIT", "soon"}, {"RELAY_QUEUE_LIFETIME", "forever"}, {"RELAY_MEMORY_LIMIT", "lots"}} {
		r := run(t, map[string]string{kv[0]: kv[1], "RELAY_KEY_FILE": "k"}, "", "serve")
		if r.code != ExitUsage || !strings.Contains(r.stderr, "environment variable "+kv[0]) || !strings.Contains(r.stderr, `"`+kv[1]+`"`) ||
			!strings.Contains(r.stderr, "--"+strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(kv[0], "RELAY_")), "_", "-")) {
			t.Errorf("%s=%s: exit %d, stderr %q", kv[0], kv[1], r.code, r.stderr)
		}
	}
	// A bad variable the command line overrides is not read: serve goes
	// on to the next check (here the flag's own range).
	r := run(t, map[string]string{"RELAY_REPLICAS": "three", "RELAY_KEY_FILE": "k"}, "", "serve", "--replicas=3", "--body-orphan-age", "1m")
	if r.code != ExitUsage || strings.Contains(r.stderr, "RELAY_REPLICAS") || !strings.Contains(r.stderr, "--body-orphan-age 1m0s: want at least") {
		t.Errorf("RELAY_REPLICAS=three with --replicas=3: exit %d, stderr %q", r.code, r.stderr)
	}

	// A value that parses but is out of range: refused as the flag would be.
	r = run(t, map[string]string{"RELAY_BODY_ORPHAN_AGE": "1m", "RELAY_KEY_FILE": "k"}, "", "serve")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--body-orphan-age 1m0s: want at least") {
		t.Errorf("RELAY_BODY_ORPHAN_AGE=1m: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestVersion: relay version and relay --version print the build
// information relay_build_info carries.
func TestVersion(t *testing.T) {
	want := "relay " + buildinfo.Read().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if r := run(t, nil, "", args...); r.code != 0 || r.stdout != want {
			t.Errorf("relay %s: exit %d, %q, want %q", args[0], r.code, r.stdout, want)
		}
	}
}

// TestHealthURL: a wildcard host is asked on loopback; off or no port is
// a usage error.
func TestHealthURL(t *testing.T) {
	for addr, want := range map[string]string{
		":9465": "http://127.0.0.1:9465/healthz", "0.0.0.0:9465": "http://127.0.0.1:9465/healthz",
		"[::]:9465": "http://[::1]:9465/healthz", "10.1.2.3:80": "http://10.1.2.3:80/healthz",
		"127.0.0.1:9465": "http://127.0.0.1:9465/healthz",
	} {
		if got, err := healthURL(addr, "/healthz"); got != want || err != nil {
			t.Errorf("healthURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	for _, addr := range []string{"off", "", "9465"} {
		if r := run(t, nil, "", "health", "--http-addr", addr); r.code != ExitUsage {
			t.Errorf("health --http-addr %q: exit %d, %s", addr, r.code, r.stderr)
		}
	}
}

// TestHealthAgainstServe runs relay serve configured only through the
// environment (as the container image does), then relay health against
// it: 0 for /healthz, 1 with the reason for /readyz (no account yet),
// relay_build_info on its /metrics with the labels relay version prints;
// 1 once serve has stopped.
func TestHealthAgainstServe(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "token.key")
	if r := run(t, nil, "", "keygen", "--out", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	envVars := map[string]string{
		"RELAY_KEY_FILE": key, "RELAY_DATA_DIR": dir, "RELAY_NATS_LISTEN": "127.0.0.1:0",
		"RELAY_HTTP_ADDR": "127.0.0.1:0", "RELAY_LOG_FORMAT": "json",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logw := &testutil.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"serve"}, Env{Stdout: &bytes.Buffer{}, Stderr: logw, Getenv: func(k string) string { return envVars[k] }})
	}()
	up, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	var addr string
	testutil.Eventually(t, up, "serve to come up", func() bool {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before serving: %s", code, logw.String())
		default:
		}
		for _, line := range strings.Split(logw.String(), "\n") {
			var l struct{ Message, HTTP string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == "relay serving" {
				addr = l.HTTP
			}
		}
		return addr != ""
	})

	if r := run(t, map[string]string{"RELAY_HTTP_ADDR": addr}, "", "health"); r.code != 0 || !strings.Contains(r.stdout, "/healthz: ok") {
		t.Errorf("health: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, nil, "", "health", "--http-addr", addr, "--ready"); r.code != ExitFail || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "no account with a usable token") {
		t.Errorf("health --ready without accounts: exit %d, %q", r.code, r.stderr)
	}

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	bi := buildinfo.Read()
	wantLine := `relay_build_info{goversion="` + bi.GoVersion + `",revision="` + bi.Revision + `",version="` + bi.Version + `"} 1`
	if !strings.Contains(string(body), wantLine) {
		t.Errorf("/metrics has no %s", wantLine)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	if r := run(t, nil, "", "health", "--http-addr", addr, "--timeout", "2s"); r.code != ExitFail || !strings.Contains(r.stderr, "is relay serve running") {
		t.Errorf("health after stop: exit %d, %q", r.code, r.stderr)
	}
}

// TestFlagsIn: the flags a command line sets, read as the flag package
// reads them (a boolean flag takes no value; "--" ends the flags).
func TestFlagsIn(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Bool("dry", false, "")
	fs.String("to", "", "")
	fs.Int("n", 0, "")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"--dry", "--to", "x"}, "dry,to"},
		{[]string{"-to=x", "-n", "3"}, "n,to"},
		{[]string{"--n", "3", "--", "--to", "x"}, "n"},
		{[]string{"--to"}, ""},
		{[]string{"--unknown", "--to", "x"}, ""},
	} {
		set := flagsIn(fs, tt.args)
		var got []string
		fs.VisitAll(func(f *flag.Flag) {
			if set[f.Name] {
				got = append(got, f.Name)
			}
		})
		if g := strings.Join(got, ","); g != tt.want {
			t.Errorf("flagsIn(%q) = %q, want %q", tt.args, g, tt.want)
		}
	}
}
