//go:build integration

package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"relay365/internal/fakeo365"
	"relay365/internal/pki"
	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
)

// TestAlertmanager: Debian's Alertmanager, configured as an operator would
// (email_configs with smarthost, auth_username, auth_password or
// auth_password_file, require_tls and tls_config.ca_file), delivers an
// alert through the SMTP front door to the fake Office 365, sent as the
// account's mailbox with Alertmanager's address as Reply-To.
//
// Alertmanager (0.25 in Debian 12) speaks implicit TLS only to port 465,
// so it uses the STARTTLS listener. It verifies the certificate for
// tls_config.server_name, which defaults to the smarthost's host: for
// 127.0.0.1 Go checks the certificate's IP addresses, which the relay's
// loopback certificate has.
func TestAlertmanager(t *testing.T) {
	bin, amtool := lookPath(t, "prometheus-alertmanager"), lookPath(t, "amtool")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, _ := sandboxtest.Start(t, t.TempDir())

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "smtp-password")
	if err := os.WriteFile(pwFile, []byte(s.SMTPPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	// Two email_configs: the password inline and from a file, each to its
	// own recipient so each is seen to arrive.
	const alert = "RelayIntegrationProbe"
	emailConfig := `
      - to: %s
        from: alertmanager@example.org
        smarthost: %s
        auth_username: %s
        %s: %s
        require_tls: true
        tls_config:
          ca_file: %s
          server_name: 127.0.0.1`
	smarthost, ca := s.Daemon.Ingress.Addr().String(), strconv.Quote(s.Daemon.SMTPCAFile)
	cfg := `route:
  receiver: relay
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: relay
    email_configs:` +
		fmt.Sprintf(emailConfig, "ops@contoso.com", smarthost, sandbox.Producer, "auth_password", strconv.Quote(s.SMTPPassword), ca) +
		fmt.Sprintf(emailConfig, "oncall@contoso.com", smarthost, sandbox.Producer, "auth_password_file", strconv.Quote(pwFile), ca) + "\n"
	cfgFile := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, amtool, "check-config", cfgFile)

	addr := testutil.FreeAddr(t)
	startServer(t, bin, "--config.file="+cfgFile, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=", "--log.level=debug")
	base := "http://" + addr
	waitReady(t, ctx, "alertmanager", base)

	body := `[{"labels": {"alertname": "` + alert + `", "instance": "web-3", "severity": "page"},
	  "annotations": {"summary": "load 17.2 on web-3"}}]`
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/api/v2/alerts", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /api/v2/alerts: %s", resp.Status)
	}

	for _, rcpt := range []string{"ops@contoso.com", "oncall@contoso.com"} {
		m := waitDelivered(t, ctx, s, "the alert mail to "+rcpt, func(m fakeo365.Message) bool {
			return strings.Contains(m.Subject, alert) && slices.Equal(m.To, []string{rcpt})
		})
		checkFromPolicy(t, m, "alertmanager@example.org")
		if !strings.HasPrefix(m.Subject, "[FIRING:1] "+alert) {
			t.Errorf("to %s: subject %q, want Alertmanager's default [FIRING:1] %s …", rcpt, m.Subject, alert)
		}
		t.Logf("to %s: %q from %s", rcpt, m.Subject, m.HeaderFrom)
	}
}

// TestSwaks: a real SMTP client (swaks, Debian's package) submits over
// STARTTLS and over implicit TLS, pipelined too, verifying the relay's certificate
// against the sandbox's CA file, and each message reaches the fake Office
// 365; a CA that did not sign the certificate fails TLS, and a wrong
// password gets 535.
//
// swaks (20201014 in Debian 12) checks the chain only with --tls-verify
// (without it, it verifies nothing) and never the host name.
func TestSwaks(t *testing.T) {
	bin := lookPath(t, "swaks")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, _ := sandboxtest.Start(t, t.TempDir())

	// The command the sandbox prints is the one tested first, as printed.
	var printed []string
	for line := range strings.Lines(s.Banner(t.TempDir())) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "swaks" {
			printed = f[1:]
		}
	}
	if !slices.Contains(printed, "--tls-verify") {
		t.Fatalf("the banner's swaks command %q does not verify the certificate", printed)
	}
	starttls := []string{"--server", s.Daemon.Ingress.Addr().String(), "--tls", "--tls-verify", "--tls-ca-path", s.Daemon.SMTPCAFile}
	from := []string{"--from", "alertmanager@example.org", "--to", "ops@contoso.com"}
	auth := func(mech, password string) []string {
		return []string{"--auth", mech, "--auth-user", sandbox.Producer, "--auth-password", password}
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"STARTTLS and AUTH PLAIN, the banner's command", printed},
		{"implicit TLS and AUTH LOGIN", slices.Concat([]string{"--server", s.Daemon.Ingress.TLSAddr().String(),
			"--tls-on-connect", "--tls-verify", "--tls-ca-path", s.Daemon.SMTPCAFile}, auth("LOGIN", s.SMTPPassword), from)},
		// RFC 2920: MAIL, RCPT and DATA sent in one go; and a message of
		// its own with no Date field (swaks's template has one), which
		// the front door adds (the check below: one Date field).
		{"STARTTLS, AUTH LOGIN, PIPELINING and no Date", slices.Concat(starttls, auth("LOGIN", s.SMTPPassword), from,
			[]string{"--pipeline", "--data", `From: %FROM_ADDRESS%\nTo: %TO_ADDRESS%\nSubject: %SUBJECT%\n\n%BODY%\n`})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subject := "swaks " + tc.name
			out, code := swaks(t, ctx, bin, append(tc.args, "--header", "Subject: "+subject, "--body", "load 17.2")...)
			if code != 0 {
				t.Fatalf("swaks exited %d:\n%s", code, out)
			}
			if !strings.Contains(out, "=== TLS started with cipher") || !strings.Contains(out, "<~  250 2.0.0") {
				t.Fatalf("no TLS session or no 250 after DATA:\n%s", out)
			}
			m := waitDelivered(t, ctx, s, subject, func(m fakeo365.Message) bool { return m.Subject == subject })
			checkFromPolicy(t, m, "alertmanager@example.org")
			if n := bytes.Count(m.Data, []byte("\r\nDate: ")); n != 1 {
				t.Errorf("%d Date fields, want 1:\n%s", n, m.Data)
			}
		})
	}

	t.Run("a CA that did not sign the certificate", func(t *testing.T) {
		other, err := pki.NewCA("not the relay's CA")
		if err != nil {
			t.Fatal(err)
		}
		caFile := testutil.WriteFile(t, "other-ca.pem", string(other.PEM))
		args := slices.Concat(starttls, auth("PLAIN", s.SMTPPassword), from)
		args[slices.Index(args, "--tls-ca-path")+1] = caFile
		out, code := swaks(t, ctx, bin, args...)
		if code != 29 || !strings.Contains(out, "certificate verify failed") || strings.Contains(out, "AUTH PLAIN") {
			t.Fatalf("swaks exited %d; want 29 (TLS failed: certificate verify failed) before AUTH:\n%s", code, out)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		out, code := swaks(t, ctx, bin, slices.Concat(starttls, auth("PLAIN", s.SMTPPassword+"x"), from)...)
		if code != 28 || !strings.Contains(out, "<~* 535 5.7.8") {
			t.Fatalf("swaks exited %d; want 28 (AUTH failed) with 535 5.7.8:\n%s", code, out)
		}
	})
}

// swaks runs swaks to completion and returns its transcript and exit code.
func swaks(t *testing.T, ctx context.Context, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--timeout", "30"}, args...)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	case err != nil:
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	return string(out), 0
}

// waitDelivered waits until the fake Office 365 holds a message match
// accepts, and returns it.
func waitDelivered(t *testing.T, ctx context.Context, s *sandbox.Sandbox, what string, match func(fakeo365.Message) bool) fakeo365.Message {
	t.Helper()
	var found fakeo365.Message
	testutil.Eventually(t, ctx, what+" at the fake Office 365", func() bool {
		for _, m := range s.Fake.Messages() {
			if match(m) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// checkFromPolicy: the message went out as the sandbox's mailbox (envelope,
// authenticated user and From field), and the sender's own address is its
// Reply-To (the rewrite From policy).
func checkFromPolicy(t *testing.T, m fakeo365.Message, sender string) {
	t.Helper()
	if m.HeaderFrom != sandbox.Mailbox || m.From != sandbox.Mailbox || m.Mailbox != sandbox.Mailbox {
		t.Errorf("%q: From field %s, MAIL FROM %s, authenticated as %s; want %s for each", m.Subject, m.HeaderFrom, m.From, m.Mailbox, sandbox.Mailbox)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("%q: delivered message does not parse: %v", m.Subject, err)
	}
	replyTo, err := msg.Header.AddressList("Reply-To")
	if err != nil || len(replyTo) != 1 || replyTo[0].Address != sender {
		t.Errorf("%q: Reply-To %q (%v), want %s\n%s", m.Subject, msg.Header.Get("Reply-To"), err, sender, m.Data)
	}
}

// TestAlertmanagerRoutesRelayAlertsAroundTheRelay: the shipped
// alertmanager.yml mails alerts through the relay. The relay's own
// critical alerts say that mail through it may not arrive (it is down,
// it sends nothing, it cannot read its queue, the alerts account needs
// consent), so amtool, routing each as Alertmanager would, must send each
// of them to a receiver that does not mail through the relay as well;
// every alert, the relay's own included, still reaches the mail receiver.
func TestAlertmanagerRoutesRelayAlertsAroundTheRelay(t *testing.T) {
	amtool := lookPath(t, "amtool")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfgFile := path("deploy/alertmanager/alertmanager.yml")
	run(t, ctx, amtool, "check-config", cfgFile)
	var cfg struct {
		Global struct {
			Smarthost string `yaml:"smtp_smarthost"`
		} `yaml:"global"`
		Receivers []struct {
			Name         string           `yaml:"name"`
			EmailConfigs []map[string]any `yaml:"email_configs"`
		} `yaml:"receivers"`
	}
	readYAML(t, "deploy/alertmanager/alertmanager.yml", &cfg)
	throughRelay := map[string]bool{}
	for _, r := range cfg.Receivers {
		for _, e := range r.EmailConfigs {
			host, _ := e["smarthost"].(string)
			if host == "" {
				host = cfg.Global.Smarthost
			}
			throughRelay[r.Name] = throughRelay[r.Name] || strings.HasPrefix(host, "relay-worker:")
		}
	}
	route := func(labels ...string) []string {
		args := append([]string{"config", "routes", "test", "--config.file=" + cfgFile}, labels...)
		out, err := exec.CommandContext(ctx, amtool, args...).Output()
		if err != nil {
			t.Fatalf("amtool %s: %v", strings.Join(args, " "), err)
		}
		return strings.Split(strings.TrimSpace(string(out)), ",")
	}
	for _, r := range readRules(t) {
		got := route("alertname="+r.Alert, "severity="+r.Labels["severity"], "account=alerts")
		around := slices.ContainsFunc(got, func(rc string) bool { return !throughRelay[rc] })
		if r.Labels["severity"] == "critical" && !around {
			t.Errorf("%s (critical) goes to %v, all mailed through the relay it reports on", r.Alert, got)
		}
		if !slices.ContainsFunc(got, func(rc string) bool { return throughRelay[rc] }) {
			t.Errorf("%s goes to %v, no longer by mail", r.Alert, got)
		}
	}
	if got := route("alertname=HighLoad", "severity=critical"); len(got) != 1 || !throughRelay[got[0]] {
		t.Errorf("another alert goes to %v, want only the mail receiver", got)
	}
}
