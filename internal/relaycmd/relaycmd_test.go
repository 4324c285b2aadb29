package relaycmd

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/memlimit"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
	"relay365/internal/testutil"
)

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	return runIn(t, env, strings.NewReader(stdin), args...)
}

// runIn is run with stdin as standard input.
func runIn(t *testing.T, env map[string]string, stdin io.Reader, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, ok := env["RELAY_SENDMAIL_SPOOL"]; !ok && len(args) > 0 && args[0] == "sendmail" {
		// Not the host's /var/spool/relay365: a test names its spool.
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["RELAY_SENDMAIL_SPOOL"] = "off"
	}
	code := Run(ctx, args, Env{
		Stdin: stdin, Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
	})
	return result{code, out.String(), errb.String()}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "Usage: relay"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"serve", "--nope"}, "flag provided but not defined: -nope"},
		{"serve without key", []string{"serve", "--http-addr", "off"}, "relay keygen"},
		{"serve bad max-deliver", []string{"serve", "--key-file", "k", "--max-deliver", "1"}, "--max-deliver 1"},
		{"serve bad sync", []string{"serve", "--key-file", "k", "--nats-sync", "sometimes"}, `--nats-sync "sometimes"`},
		{"serve body orphan age under the dedupe window", []string{"serve", "--key-file", "k", "--body-orphan-age", "1h"}, "--body-orphan-age 1h0m0s: want at least MAIL's duplicate window, 24h0m0s with --queue-lifetime 120h0m0s"},
		{"serve body orphan age under a short lifetime's window", []string{"serve", "--key-file", "k", "--queue-lifetime", "10s", "--body-orphan-age", "69s"}, "--body-orphan-age 1m9s: want at least MAIL's duplicate window, 1m10s with --queue-lifetime 10s"},
		{"serve body sweep too often", []string{"serve", "--key-file", "k", "--body-sweep-every", "10ms"}, "--body-sweep-every 10ms: want at least 1s"},
		{"serve body sweep not a duration", []string{"serve", "--key-file", "k", "--body-sweep-every", "hourly"}, `invalid value "hourly" for flag -body-sweep-every`},
		{"serve bad margin", []string{"serve", "--key-file", "k", "--refresh-margin", "2h"}, "--refresh-margin 2h0m0s"},
		{"stray argument", []string{"publish", "extra"}, `unexpected argument "extra"`},
		{"publish no recipients", []string{"publish", "--account", "alerts", "--subject", "x"}, "no recipients"},
		{"publish CRLF subject", []string{"publish", "--account", "alerts", "--to", "a@b.com", "--subject", "a\r\nBcc: x@y.com"}, "header injection"},
		{"publish bad account", []string{"publish", "--account", "Bad.Name", "--to", "a@b.com"}, "account"},
		{"publish bad file", []string{"publish", "-f", "/nonexistent/msg.json"}, "-f:"},
		{"keygen bad flag", []string{"keygen", "--size", "3"}, "flag provided but not defined"},
		{"bench bad conns", []string{"bench", "--conns", "1,x"}, `--conns "1,x"`},
		{"bench zero conns", []string{"bench", "--conns", "0"}, "--conns: 0 connections"},
		{"bench conns twice", []string{"bench", "--conns", "4,4"}, "4 given twice"},
		{"bench small size", []string{"bench", "--size", "10"}, "--size 10"},
		{"bench bad rate", []string{"bench", "--rate", "0"}, "--rate 0"},
		{"bench bad publish batch", []string{"bench", "--publish-batch", "0"}, "--publish-batch 0"},
		{"bench bad messages", []string{"bench", "--messages", "-5"}, "--messages -5"},
		{"bench bad sync", []string{"bench", "--sync", "always,never"}, `--sync "never": want "always" or a positive duration`},
		{"publish NATS user without password", []string{"publish", "--account", "alerts", "--to", "a@b.com", "--nats-user", "u"}, "--nats-password-file FILE or RELAY_NATS_PASSWORD"},
		{"dlq missing creds file", []string{"dlq", "list", "--nats-creds", "/nonexistent/relay.creds"}, "--nats-creds"},
		{"serve NATS auth without URL", []string{"serve", "--key-file", "k", "--nats-creds", "/nonexistent/relay.creds"}, "set --nats-url"},
		{"serve memory limit too small", []string{"serve", "--key-file", "k", "--memory-limit", "8MiB"}, "--memory-limit 8MiB: want at least 32MiB"},
		{"serve memory limit not a size", []string{"serve", "--key-file", "k", "--memory-limit", "64MB"}, `--memory-limit "64MB": want a size such as 64MiB`},
		{"sandbox memory limit too small", []string{"sandbox", "--memory-limit", "1000"}, "--memory-limit 1000B: want at least 32MiB"},
		{"bench memory limit not a size", []string{"bench", "--memory-limit", "lots"}, `--memory-limit "lots"`},
		{"bench ingress zero conns", []string{"bench", "--ingress", "--conns", "0"}, "--conns: 0 connections"},
		{"bench ingress too many conns", []string{"bench", "--ingress", "--conns", "16,65"}, "--conns: 65 connections"},
		{"bench ingress bad sync", []string{"bench", "--ingress", "--sync", "never"}, `--sync "never": want "always" or a positive duration`},
		{"bench ingress small size", []string{"bench", "--ingress", "--size", "10"}, "--size 10"},
		{"bench ingress bad messages", []string{"bench", "--ingress", "--messages", "0"}, "--messages 0"},
		{"bench ingress not a boolean", []string{"bench", "--ingress=maybe"}, `invalid boolean value "maybe" for -ingress`},
		{"bench accounts negative", []string{"bench", "--accounts", "-1"}, "--accounts -1: want 1 to 20000 mailboxes"},
		{"bench accounts too many", []string{"bench", "--accounts", "20001"}, "--accounts 20001: want 1 to 20000 mailboxes"},
		{"bench accounts zero duration", []string{"bench", "--accounts", "20", "--accounts-duration", "0s"}, "--accounts-duration 0s: want a duration above 0"},
		{"bench accounts negative settle", []string{"bench", "--accounts", "20", "--accounts-settle", "-5s"}, "--accounts-settle -5s: want a duration above 0"},
		{"bench accounts zero idle", []string{"bench", "--accounts", "20", "--accounts-idle", "0s"}, "--accounts-idle 0s: want a duration above 0"},
		{"bench accounts idle not a duration", []string{"bench", "--accounts", "20", "--accounts-idle", "long"}, `invalid value "long" for flag -accounts-idle`},
		{"bench accounts two syncs", []string{"bench", "--accounts", "20", "--sync", "always,2m"}, "--accounts runs one sync setting"},
		{"bench accounts with ingress", []string{"bench", "--accounts", "20", "--ingress"}, "--accounts and --ingress: give one of them"},
		{"serve NATS password as a flag", []string{"serve", "--key-file", "k", "--nats-password", "x"}, "flag provided but not defined: -nats-password"},
		{"serve SMTP on all interfaces without a certificate", []string{"serve", "--key-file", "k", "--smtp-listen", ":587"}, "--smtp-listen :587 reaches other hosts: give it a certificate"},
		{"serve SMTPS on a LAN address without a certificate", []string{"serve", "--key-file", "k", "--smtps-listen", "10.0.0.5:465"}, "--smtps-listen 10.0.0.5:465 reaches other hosts"},
		{"serve SMTP certificate without key", []string{"serve", "--key-file", "k", "--smtp-listen", ":587", "--smtp-tls-cert", "c.pem"}, "--smtp-tls-cert and --smtp-tls-key go together"},
		{"serve SMTP bad address", []string{"serve", "--key-file", "k", "--smtp-listen", "587"}, `--smtp-listen "587": want host:port`},
		{"producer without command", []string{"producer"}, "add, list or remove"},
		{"serve embedded NATS on all interfaces without TLS", []string{"serve", "--key-file", "k", "--nats-listen", "0.0.0.0:4222"}, "--nats-listen 0.0.0.0:4222 reaches other hosts: give the embedded server a certificate"},
		{"serve embedded NATS TLS certificate without key", []string{"serve", "--key-file", "k", "--nats-server-tls-cert", "c.pem"}, "--nats-server-tls-cert and --nats-server-tls-key go together"},
		// The embedded server is one node: JetStream refused the streams
		// once it ran ("replicas > 1 not supported in non-clustered
		// mode", exit 1).
		{"serve replicas on the embedded server", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:0", "--data-dir", "/dev/null", "--replicas", "3"}, "--replicas 3: the embedded NATS server is a single node"},
		{"setup bad replicas", []string{"setup", "--replicas", "2"}, "--replicas 2"},
		{"producer add without accounts", []string{"producer", "add", "cron"}, "--accounts is required"},
		{"producer add bad name", []string{"producer", "add", "Cron Jobs", "--accounts", "alerts"}, `producer name "Cron Jobs"`},
		{"producer add short password", []string{"producer", "add", "cron", "--accounts", "alerts", "--password-file", "-"}, "shorter than 12"},
		{"producer remove without name", []string{"producer", "remove"}, "takes 1 argument(s), got 0"},
		// Checked after connecting, this was exit 1 with NATS up and "is
		// relay serve running?" with it down.
		{"producer add bad account", []string{"producer", "add", "cron", "--accounts", "alerts,Ops!", "--nats-url", "nats://127.0.0.1:1"}, `--accounts: "Ops!" is not an account alias`},
		// Found at start, before anything listens, not by net.Listen once
		// the embedded server runs (that was exit 1).
		{"serve HTTP port out of range", []string{"serve", "--roles", "workers", "--http-addr", "127.0.0.1:99999"}, `--http-addr "127.0.0.1:99999": port "99999": want a number from 0 to 65535`},
		{"serve embedded NATS port out of range", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:70000"}, `--nats-listen "127.0.0.1:70000": port "70000"`},
		{"serve SMTP port not a number", []string{"serve", "--roles", "workers", "--smtp-listen", "127.0.0.1:smtpx"}, `--smtp-listen "127.0.0.1:smtpx": port "smtpx"`},
		// Passed by the start-up check, then refused by the embedded
		// server's own parse (exit 1), or taken as "any port".
		{"serve embedded NATS without a port", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:", "--data-dir", "/dev/null"}, `--nats-listen "127.0.0.1:": port "": want a number from 0 to 65535`},
		{"serve embedded NATS port a service name", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:http", "--data-dir", "/dev/null"}, `--nats-listen "127.0.0.1:http": port "http": want a number from 0 to 65535`},
		{"serve HTTP without a port", []string{"serve", "--roles", "workers", "--http-addr", "127.0.0.1:", "--data-dir", "/dev/null"}, `--http-addr "127.0.0.1:": port ""`},
		// The sandbox's zero values are its defaults: an empty flag
		// started it on 127.0.0.1:9465, data/sandbox or SMTP on 2525
		// without a word.
		{"sandbox empty HTTP address", []string{"sandbox", "--http-addr", "", "--nats-listen", "127.0.0.1:70000"}, "--http-addr is empty"},
		{"sandbox empty SMTP address", []string{"sandbox", "--smtp-listen", "", "--nats-listen", "127.0.0.1:70000"}, "--smtp-listen is empty: give host:port, or off"},
		{"sandbox empty data directory", []string{"sandbox", "--data-dir", "", "--nats-listen", "127.0.0.1:70000"}, "--data-dir is empty"},
		{"sandbox NATS port out of range", []string{"sandbox", "--nats-listen", "127.0.0.1:70000"}, `--nats-listen "127.0.0.1:70000": port "70000"`},
		{"serve negative shutdown grace", []string{"serve", "--roles", "workers", "--shutdown-grace", "-5s"}, "--shutdown-grace -5s: want a duration above 0"},
		{"serve zero SMTP connections", []string{"serve", "--roles", "workers", "--smtp-max-conns", "0"}, "--smtp-max-conns 0, --smtp-max-conns-per-ip 20: want at least 1 each"},
		{"serve negative SMTP connections per address", []string{"serve", "--roles", "workers", "--smtp-max-conns-per-ip", "-1"}, "--smtp-max-conns-per-ip -1: want at least 1 each"},
		{"serve SMTP certificate missing", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--smtp-tls-cert", "/nonexistent/c.pem", "--smtp-tls-key", "/nonexistent/k.pem"}, "--smtp-tls-cert/--smtp-tls-key: open /nonexistent/c.pem"},
		{"serve embedded NATS certificate missing", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:0", "--nats-server-tls-cert", "/nonexistent/c.pem", "--nats-server-tls-key", "/nonexistent/k.pem"}, "--nats-server-tls-cert/--nats-server-tls-key: open /nonexistent/c.pem"},
		{"serve data dir a file", []string{"serve", "--roles", "workers", "--http-addr", "off", "--nats-listen", "127.0.0.1:0", "--data-dir", "/dev/null"}, "--data-dir /dev/null: mkdir /dev/null: not a directory"},
		// A file that cannot be used is not a server that is not up yet
		// (relay serve waited for ever; the others said "is relay serve
		// running?", exit 1).
		{"serve nkey file not a seed", []string{"serve", "--roles", "workers", "--nats-url", "nats://127.0.0.1:1", "--nats-nkey", "/dev/null", "--http-addr", "off"}, "--nats-nkey /dev/null: nkeys: no nkey seed found"},
		{"serve creds file not credentials", []string{"serve", "--roles", "workers", "--nats-url", "nats://127.0.0.1:1", "--nats-creds", "/dev/null", "--http-addr", "off"}, "--nats-creds /dev/null: not a NATS credentials file"},
		{"serve NATS CA file not PEM", []string{"serve", "--roles", "workers", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-ca", "/dev/null", "--http-addr", "off"}, "--nats-tls-ca /dev/null: no PEM certificate in it"},
		{"publish empty password file", []string{"publish", "--nats-url", "nats://127.0.0.1:1", "--nats-user", "u", "--nats-password-file", "/dev/null", "--account", "alerts", "--to", "a@b.com"}, "--nats-password-file: /dev/null is empty"},
		{"dlq client certificate not PEM", []string{"dlq", "list", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-cert", "/dev/null", "--nats-tls-key", "/dev/null"}, "--nats-tls-cert/--nats-tls-key: tls: failed to find any PEM data"},
		{"publish zero timeout", []string{"publish", "--timeout", "0s", "--account", "alerts", "--to", "a@b.com"}, "--timeout 0s: want a duration above 0"},
		// A --timeout that has already run out failed the first call as
		// "context deadline exceeded" (exit 1): relay health called a
		// healthy relay unhealthy.
		{"dlq zero timeout", []string{"dlq", "list", "--nats-url", "nats://127.0.0.1:1", "--timeout", "0s"}, "--timeout 0s: want a duration above 0"},
		{"producer negative timeout", []string{"producer", "list", "--nats-url", "nats://127.0.0.1:1", "--timeout", "-1s"}, "--timeout -1s: want a duration above 0"},
		{"setup zero timeout", []string{"setup", "--nats-url", "nats://127.0.0.1:1", "--timeout", "0s"}, "--timeout 0s: want a duration above 0"},
		{"health zero timeout", []string{"health", "--http-addr", "127.0.0.1:1", "--timeout", "0s"}, "--timeout 0s: want a duration above 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, nil, "", tc.args...)
			if r.code != ExitUsage {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, ExitUsage, r.stderr)
			}
			if !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Fatalf("output lacks %q:\n%s%s", tc.want, r.stdout, r.stderr)
			}
		})
	}
}

// TestPublishNATSUnreachable: try again later (75, TestPublishExitCodes),
// and a password in the URL stays out of the message.
func TestPublishNATSUnreachable(t *testing.T) {
	r := run(t, map[string]string{"RELAY_NATS_URL": "nats://relay:s3cret-pw@127.0.0.1:1"}, "", "publish", "--account", "alerts", "--to", "a@b.com", "--subject", "x")
	if r.code != exTempFail || !strings.Contains(r.stderr, "is relay serve or relay sandbox running") || strings.Contains(r.stderr, "s3cret-pw") {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
}

func TestPublishFlagsAndFile(t *testing.T) {
	env := queuetest.Start(t)
	ctx := context.Background()
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"RELAY_NATS_URL": env.URL}
	html := filepath.Join(t.TempDir(), "body.html")
	os.WriteFile(html, []byte("<p>hi</p>"), 0o644)
	r := run(t, vars, "", "publish", "--account", "alerts", "--to", "a@b.com,b@b.com", "--cc", "c@b.com",
		"--subject", "CPU high", "--text", "load", "--html-file", html, "--id", "cli-1")
	if r.code != 0 || !strings.Contains(r.stdout, "queued: id cli-1, stream sequence 1") {
		t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	r = run(t, vars, "", "publish", "--account", "alerts", "--to", "a@b.com", "--id", "cli-1")
	if r.code != 0 || !strings.Contains(r.stdout, "duplicate: id cli-1") {
		t.Fatalf("second publish: exit %d: %s", r.code, r.stdout)
	}
	r = run(t, vars, `{"to":["ops@contoso.com"],"subject":"from stdin"}`, "publish", "-f", "-", "--account", "alerts", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"seq":2`) {
		t.Fatalf("stdin publish: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	r = run(t, vars, `{"to":["ops@contoso.com"],"subjet":"typo"}`, "publish", "-f", "-", "--account", "alerts")
	if r.code != 0 || !strings.Contains(r.stderr, "warning: fields the relay does not know are ignored: subjet") {
		t.Fatalf("a misspelled field: exit %d, stderr %q; want it queued with a warning", r.code, r.stderr)
	}
	stream, _ := env.JS.Stream(ctx, queue.StreamMail)
	first, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m, err := message.Decode(first.Data)
	if err != nil {
		t.Fatal(err)
	}
	if first.Subject != "mail.send.alerts" || first.Header.Get(jetstream.MsgIDHeader) != "cli-1" ||
		len(m.To) != 2 || m.Cc[0] != "c@b.com" || m.HTML != "<p>hi</p>" || m.Text != "load" {
		t.Fatalf("published message: %s %v %+v", first.Subject, first.Header, m)
	}
}

// TestPublishManyFromFile: -f with several JSON messages queues them
// all in atomic batches, one line per message; an invalid one among them
// queues none and names it.
func TestPublishManyFromFile(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL}
	var lines strings.Builder
	for i := range 150 {
		fmt.Fprintf(&lines, `{"id":"many-%d","to":["ops@contoso.com"],"subject":"many %d"}`+"\n", i, i)
	}
	r := run(t, vars, lines.String(), "publish", "-f", "-", "--account", "alerts")
	if r.code != 0 || strings.Count(r.stdout, "queued: id many-") != 150 || !strings.Contains(r.stdout, "queued: id many-149, stream sequence 150, account alerts") {
		t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	r = run(t, vars, lines.String(), "publish", "-f", "-", "--account", "alerts", "--json")
	if r.code != 0 || strings.Count(r.stdout, `"duplicate":true`) != 150 {
		t.Fatalf("the same file again: exit %d, want 150 duplicates: %s %s", r.code, r.stdout, r.stderr)
	}
	bad := `{"id":"x-1","to":["ops@contoso.com"],"subject":"fine"}` + "\n" + `{"id":"x-2","subject":"no recipient"}`
	r = run(t, vars, bad, "publish", "-f", "-", "--account", "alerts")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "message 2 of 2") {
		t.Fatalf("a file with an invalid second message: exit %d, stderr %q; want a usage error naming message 2", r.code, r.stderr)
	}
	r = run(t, vars, lines.String(), "publish", "-f", "-", "--account", "alerts", "--id", "one")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--id and --attach name one message") {
		t.Fatalf("--id with several messages: exit %d, stderr %q", r.code, r.stderr)
	}
	stream, err := env.JS.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 150 {
		t.Fatalf("MAIL holds %d, want the 150 of the first file only", info.State.Msgs)
	}
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "token.key")
	r := run(t, nil, "", "keygen", "--out", path)
	if r.code != 0 || !strings.Contains(r.stdout, "export RELAY_TOKEN_KEY_FILE=") {
		t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	key, _ := os.ReadFile(path)
	if strings.Contains(r.stdout+r.stderr, strings.TrimSpace(string(key))) {
		t.Fatal("keygen printed the key")
	}
	if r := run(t, nil, "", "keygen", "--out", path); r.code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}
}

// TestServeStartsAndStops also checks that serve applies --memory-limit
// to the process (GOMEMLIMIT unset: it would win).
func TestServeStartsAndStops(t *testing.T) {
	t.Setenv(memlimit.EnvVar, "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	dir := t.TempDir()
	key := filepath.Join(dir, "token.key")
	if r := run(t, nil, "", "keygen", "--out", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logw := &testutil.Buffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, []string{"serve", "--data-dir", dir, "--nats-listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json", "--memory-limit", "96MiB"},
			Env{Stdout: &bytes.Buffer{}, Stderr: logw, Getenv: func(k string) string {
				return map[string]string{"RELAY_TOKEN_KEY_FILE": key}[k]
			}})
	}()
	up, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	testutil.Eventually(t, up, "serve to come up", func() bool {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before serving: %s", code, logw.String())
		default:
		}
		return strings.Contains(logw.String(), `"message":"relay serving"`)
	})
	if got := debug.SetMemoryLimit(-1); got != 96<<20 {
		t.Errorf("soft memory limit %d, want 96MiB from --memory-limit", got)
	}
	if !strings.Contains(logw.String(), `"memory_limit":"96MiB","from":"--memory-limit"`) {
		t.Errorf("the limit in effect is not logged: %s", logw.String())
	}
	cancel() // what SIGTERM does through signal.NotifyContext
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exit %d: %s", code, logw.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after cancel")
	}
}

// TestBenchIngressDefaults: `relay bench --ingress` measures 16 submission
// connections with sync always unless told otherwise, one JSON line each.
func TestBenchIngressDefaults(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := Run(ctx, []string{"bench", "--ingress", "--messages", "40", "--latency-messages", "10", "--size", "512", "--json", "--memory-limit", "off"},
		Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"mode":"ingress","sync":"always","conns":16,"messages":40,`) {
		t.Fatalf("want one line for 16 connections, sync always:\n%s", out.String())
	}
}

// TestPublishRefusesRawTheWorkerCannotRender: relay publish -f with a raw
// message no account could send (its first line no header field) exits 2
// with the reason and queues nothing, as it does for a message without
// recipients, instead of exit 0 and a dead letter a second later.
func TestPublishRefusesRawTheWorkerCannotRender(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL}
	raw := base64.StdEncoding.EncodeToString([]byte("this is not a header\r\n\r\nbody\r\n"))
	r := run(t, vars, `{"to":["ops@contoso.com"],"raw":"`+raw+`"}`, "publish", "-f", "-", "--account", "alerts")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "is not a header field") {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 naming the line that is no header field", r.code, r.stdout, r.stderr)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("MAIL holds %d, want nothing queued", n)
	}
}

// TestPublishRefusedByNATS: relay publish with credentials that may not
// publish on mail.send.<account> (the token service's seed, named by
// mistake) says NATS refused the user, before its --timeout, instead of
// waiting it out and asking whether relay serve is running.
func TestPublishRefusedByNATS(t *testing.T) {
	rs := queuetest.StartRoles(t)
	_, ajs := rs.As(t, roles.Admin)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, ajs, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	r := run(t, map[string]string{"RELAY_NATS_URL": rs.URL}, "", "publish", "--nats-nkey", roles.SeedFile(rs.Dir, roles.Tokens),
		"--account", "alerts", "--to", "ops@contoso.com", "--subject", "x", "--timeout", "15s")
	if r.code != ExitFail || !strings.Contains(r.stderr, "Permissions Violation") || !strings.Contains(r.stderr, "nkeys/producer.nk") ||
		strings.Contains(r.stderr, "deadline exceeded") || strings.Contains(r.stderr, "is relay serve running") {
		t.Fatalf("exit %d, stderr %q; want exit 1 naming the refusal and the credentials to use, not a timeout", r.code, r.stderr)
	}
}
