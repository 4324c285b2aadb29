package sandbox_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relay365/internal/sandbox"
	"relay365/internal/testutil"
)

// TestSMTPSubmissionReachesOffice365: what Alertmanager does — STARTTLS,
// AUTH PLAIN with the sandbox's printed credential, a message from its own
// address — ends at the fake Office 365 sent as the mailbox, with the
// original From as Reply-To and the Bcc recipient in the envelope only.
func TestSMTPSubmissionReachesOffice365(t *testing.T) {
	s, _ := start(t, t.TempDir())
	pem, err := os.ReadFile(s.Daemon.SMTPCAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c, err := smtp.DialStartTLS(s.Daemon.Ingress.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", sandbox.Producer, s.SMTPPassword)); err != nil {
		t.Fatalf("AUTH with the sandbox's credential: %v", err)
	}
	body := "From: Alertmanager <alertmanager@example.org>\r\nTo: ops@contoso.com\r\n" +
		"Subject: [FIRING:1] HighLoad web-3\r\n\r\nload 17.2\r\n"
	if err := c.SendMail("alertmanager@example.org", []string{"ops@contoso.com", "audit@contoso.com"}, strings.NewReader(body)); err != nil {
		t.Fatalf("submission: %v", err)
	}
	var got []byte
	testutil.Eventually(t, t.Context(), "the message at the fake Office 365", func() bool {
		for _, m := range s.Fake.Messages() {
			if m.Subject == "[FIRING:1] HighLoad web-3" {
				if m.HeaderFrom != sandbox.Mailbox || strings.Join(m.To, ",") != "ops@contoso.com,audit@contoso.com" {
					t.Fatalf("sent From %s to %v", m.HeaderFrom, m.To)
				}
				got = m.Data
				return true
			}
		}
		return false
	})
	for _, want := range []string{
		"From: \"Alertmanager\" <" + sandbox.Mailbox + ">\r\n",
		"Reply-To: \"Alertmanager\" <alertmanager@example.org>\r\n",
		"with ESMTPSA id ",
	} {
		if !strings.Contains(string(got), want) {
			t.Fatalf("delivered message lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "audit@contoso.com") {
		t.Fatalf("the envelope-only recipient shows in the message:\n%s", got)
	}
	if strings.Contains(s.Banner(t.TempDir()), s.SMTPPassword) == false {
		t.Fatal("the banner does not print the SMTP credential")
	}
}
