package daemon_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/mail"
	"net/smtp"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/ingress"
)

// TestEmptyHeaderSectionLeavesAsAValidMessage: Go's net/smtp client sends
// what it is given, and a program that hands it only a body ("\r\n" and
// the text) submits a message whose header section is empty. RFC 5322
// §3.6 requires a From and a Date field in every message; RFC 6409 §8.2
// and §8.3 let a submission server add a missing Date and Message-ID,
// and the relay sends every message as the account's mailbox (its From
// policy, docs/office365.md §5), which is the From a message without one
// gets. So the relay takes it (250) and what Office 365 receives is a
// valid message: exactly one From (the mailbox), one Date, one
// Message-ID, and the body as sent; both ways DATA goes, held whole and
// streamed into the body store. Real parts: the daemon's SMTP front door
// over STARTTLS with Go's own net/smtp client, NATS, the worker, and the
// fake Office 365.
func TestEmptyHeaderSectionLeavesAsAValidMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fake, dir, keyFile := shutdownSetup(t)
	d, err := daemon.Start(ctx, daemon.Config{
		DataDir: dir, KeyFile: keyFile, HTTPAddr: "off", NATSListen: "127.0.0.1:0", NATSSync: "1s",
		AckWait: 3 * time.Second, ShutdownGrace: 10 * time.Second, Retry: fast, Pause: fast,
		SMTP: ingress.Config{Listen: "127.0.0.1:0"},
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	const mailbox = "apps@contoso.com"
	connectAccount(t, ctx, d, fake, "apps", mailbox)
	const password = "a producer password for the go app"
	if _, err := d.Producers.Put(ctx, "go-app", []string{"apps"}, password); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(d.SMTPCAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in the relay's SMTP CA file")
	}
	addr := d.Ingress.Addr().String()
	host, _, _ := net.SplitHostPort(addr)

	var long strings.Builder // past the front door's buffer: streamed
	for long.Len() < 3<<20 {
		long.WriteString("a line of the job's output, long enough to matter 0123456789\r\n")
	}
	for i, tc := range []struct{ name, body string }{
		{"held whole", "the job failed: exit 3\r\n"},
		{"streamed", long.String()},
	} {
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.StartTLS(&tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}); err != nil {
			t.Fatal(err)
		}
		if err := c.Auth(smtp.PlainAuth("", "go-app", password, host)); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail(mailbox); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("ops@fabrikam.com"); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("\r\n" + tc.body)); err != nil { // no header field at all
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("%s: a message with an empty header section refused: %v", tc.name, err)
		}
		c.Quit()

		msgs, err := fake.WaitMessages(ctx, i+1)
		if err != nil {
			t.Fatal(err)
		}
		got := msgs[i].Data
		m, err := mail.ReadMessage(bytes.NewReader(got))
		if err != nil {
			t.Fatalf("%s: what Office 365 received does not parse: %v\n%.2000s", tc.name, err, got)
		}
		head, _, _ := bytes.Cut(got, []byte("\r\n\r\n"))
		t.Logf("%s: the header section Office 365 received:\n%s", tc.name, head)
		from, ferr := m.Header.AddressList("From")
		_, derr := m.Header.Date()
		switch {
		case len(m.Header["From"]) != 1 || ferr != nil || len(from) != 1 || from[0].Address != mailbox:
			t.Errorf("%s: From fields %q (%v), want one, the mailbox %s (RFC 5322 §3.6)", tc.name, m.Header["From"], ferr, mailbox)
		case len(m.Header["Date"]) != 1 || derr != nil:
			t.Errorf("%s: Date fields %q (%v), want one (RFC 5322 §3.6)", tc.name, m.Header["Date"], derr)
		case len(m.Header["Message-Id"]) != 1:
			t.Errorf("%s: Message-ID fields %q, want one (RFC 6409 §8.3)", tc.name, m.Header["Message-Id"])
		case !bytes.HasSuffix(got, []byte("\r\n\r\n"+tc.body)):
			t.Errorf("%s: the body did not arrive as sent, behind the header section:\n%.2000s", tc.name, got)
		}
	}
}
