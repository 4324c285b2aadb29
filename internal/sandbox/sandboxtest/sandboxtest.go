// Package sandboxtest starts the sandbox for tests and drives it through
// the traffic an operator's dashboards and alerts are about: mail sent, a
// temporary failure retried, an invalid message dead-lettered and an
// account whose consent was revoked. The sandbox tests and the
// observability integration test (Prometheus, Chromium) share it.
package sandboxtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/sandbox"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/producer"
)

// FastRetry makes a retried message visible within a second.
var FastRetry = relay.Backoff{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2}

// Start runs a sandbox on free loopback ports with data in dataDir and
// fast retries; it stops with the test, printing the relay's logs if the
// test failed.
func Start(t testing.TB, dataDir string) (*sandbox.Sandbox, *testutil.Buffer) {
	t.Helper()
	return StartWith(t, dataDir, nil)
}

// StartWith is Start with the configuration changed by mod first.
func StartWith(t testing.TB, dataDir string, mod func(*sandbox.Config)) (*sandbox.Sandbox, *testutil.Buffer) {
	t.Helper()
	logs := &testutil.Buffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := sandbox.Config{
		DataDir: dataDir, NATSListen: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", SMTPListen: "127.0.0.1:0", SMTPSListen: "127.0.0.1:0",
		Daemon: daemon.Config{Retry: FastRetry, Pause: FastRetry, AckWait: 5 * time.Second, ShutdownGrace: 5 * time.Second},
		Fake:   fakeo365.Config{PerMinute: -1},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := sandbox.Start(ctx, cfg, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("relay logs:\n%s", logs.String())
		}
	})
	return s, logs
}

// What Exercise leaves behind.
const (
	// Revoked is the second account, connected and then revoked: it needs
	// consent, its lane is paused and one message waits for it.
	Revoked        = "billing"
	RevokedMailbox = "billing@contoso.com"
	// Sent messages go through the sandbox account, one of them after a
	// 451 and the last one submitted over SMTP; Invalid of them are
	// dead-lettered.
	Sent    = 5
	Invalid = 1
	// Misconfigured is a producer whose only account (NoAccount) was
	// never connected: its submission is refused 451 4.7.1, counted as
	// relay_ingress_messages_total{result="unavailable"}. Before the
	// sandbox producer's submission one AUTH with a wrong password is
	// refused (relay_ingress_auth_failures_total{reason="bad_credentials"}).
	Misconfigured         = "misconfigured"
	MisconfiguredPassword = "misconfigured-producer-test-password"
	NoAccount             = "nobody"
)

// Exercise connects the second account, sends Sent good messages (the
// first DATA answered 451 4.7.0 and retried, the last one submitted over
// SMTP after an AUTH with a wrong password) and Invalid invalid ones
// through the sandbox account, submits a message over SMTP for the
// Misconfigured producer (refused 451), revokes the second account and
// sends it a message, and returns once all of it has happened: mail delivered, the
// invalid message in MAIL_DLQ, the revoked account needs_consent and
// paused with its message queued. settle, if not nil, runs before the
// revocation, when the second account exists and the good traffic has
// been delivered (a test waits there for a scrape, so counters are seen
// before and after the failure).
func Exercise(t testing.TB, ctx context.Context, s *sandbox.Sandbox, settle func()) {
	t.Helper()
	if err := s.ConnectMailbox(ctx, Revoked, RevokedMailbox); err != nil {
		t.Fatal(err)
	}
	if err := s.Daemon.Engine.WaitBound(ctx, Revoked); err != nil {
		t.Fatal(err)
	}
	before := len(s.Fake.Messages())
	js := s.Daemon.JS
	s.Fake.FailNextData(1) // 451 4.7.0 once: a retried attempt
	for i := range Sent - 1 {
		Send(t, ctx, s, fmt.Sprint("exercise-", i))
	}
	exerciseSMTP(t, ctx, s)
	for i := range Invalid {
		if _, err := queue.Publish(ctx, js, sandbox.Account, fmt.Sprint("invalid-", i), []byte(`{"account":"sandbox","subject":"no recipients","text":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Fake.WaitMessages(ctx, before+Sent); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the invalid message dead-lettered", func() bool {
		n, err := queue.CountByAccount(ctx, js, queue.StreamDLQ)
		return err == nil && n[sandbox.Account] == Invalid
	})

	if settle != nil {
		settle()
	}
	// A session revocation: the next SMTP AUTH answers 535 5.7.3, the
	// forced refresh invalid_grant.
	s.Fake.RevokeMailbox(RevokedMailbox)
	publish(t, ctx, s, &producer.Message{ID: "for-revoked", Account: Revoked,
		To: []string{"ops@contoso.com"}, Subject: "waits for consent", Text: "x"})
	testutil.Eventually(t, ctx, "the revoked account needs consent and is paused", func() bool {
		rec, _, err := s.Daemon.Store.Get(ctx, Revoked)
		if err != nil || rec.State != token.StateNeedsConsent {
			return false
		}
		for _, l := range s.Daemon.Engine.Status() {
			if l.Account == Revoked {
				return l.Paused
			}
		}
		return false
	})
	mail, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "only the revoked account's message left in MAIL", func() bool {
		info, err := mail.Info(ctx, jetstream.WithSubjectFilter(queue.SubjectPrefix+">"))
		return err == nil && info.State.Msgs == 1 && info.State.Subjects[queue.Subject(Revoked)] == 1
	})
}

// Send publishes one good message with id for the sandbox account.
func Send(t testing.TB, ctx context.Context, s *sandbox.Sandbox, id string) {
	t.Helper()
	publish(t, ctx, s, &producer.Message{ID: id, Account: sandbox.Account,
		To: []string{"ops@contoso.com"}, Subject: "alert " + id, Text: "load 17.2"})
}

func publish(t testing.TB, ctx context.Context, s *sandbox.Sandbox, m *producer.Message) {
	t.Helper()
	p, err := producer.New(s.Daemon.NC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// exerciseSMTP drives the SMTP front door: a wrong password, the last
// good message as Alertmanager would submit it, and a producer whose
// account is not connected.
func exerciseSMTP(t testing.TB, ctx context.Context, s *sandbox.Sandbox) {
	t.Helper()
	body := "From: Alertmanager <alertmanager@example.org>\r\nTo: ops@contoso.com\r\n" +
		"Subject: [FIRING:1] exercise over SMTP\r\n\r\nload 17.2\r\n"
	var se *smtp.SMTPError
	err := SubmitSMTP(ctx, s, sandbox.Producer, "not-the-password", "alertmanager@example.org", body)
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("AUTH with a wrong password: %v, want 535", err)
	}
	if err := SubmitSMTP(ctx, s, sandbox.Producer, s.SMTPPassword, "alertmanager@example.org", body); err != nil {
		t.Fatalf("SMTP submission: %v", err)
	}
	if _, err := s.Daemon.Producers.Put(ctx, Misconfigured, []string{NoAccount}, MisconfiguredPassword); err != nil {
		t.Fatal(err)
	}
	err = SubmitSMTP(ctx, s, Misconfigured, MisconfiguredPassword, "alertmanager@example.org", body)
	if !errors.As(err, &se) || se.Code != 451 {
		t.Fatalf("submission by a producer without a connected account: %v, want 451", err)
	}
}

// SubmitSMTP submits one message to the sandbox's SMTP front door as a
// producer would: STARTTLS (trusting the sandbox's CA), AUTH PLAIN, MAIL
// from, RCPT ops@contoso.com, DATA body. It returns go-smtp's error (an
// *smtp.SMTPError for a reply).
func SubmitSMTP(ctx context.Context, s *sandbox.Sandbox, user, password, from, body string) error {
	pem, err := os.ReadFile(s.Daemon.SMTPCAFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c, err := smtp.DialStartTLS(s.Daemon.Ingress.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		return err
	}
	if err := c.SendMail(from, []string{"ops@contoso.com"}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}
