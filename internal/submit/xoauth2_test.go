package submit_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	. "relay365/internal/submit"
)

func TestXOAUTH2InitialResponse(t *testing.T) {
	// The exact bytes Office 365 documents: user=<mailbox>^Aauth=Bearer <token>^A^A.
	want := "user=alerts@contoso.com\x01auth=Bearer EwBAA.tok-en\x01\x01"
	mech, ir, err := NewXOAUTH2("alerts@contoso.com", "EwBAA.tok-en").Start()
	if err != nil || mech != "XOAUTH2" || string(ir) != want {
		t.Fatalf("Start() = %q %q %v", mech, ir, err)
	}
	if !bytes.Equal(XOAUTH2Response("alerts@contoso.com", "EwBAA.tok-en"), []byte(want)) {
		t.Fatal("XOAUTH2Response differs from Start's initial response")
	}
}

// fakeToken gets a real delegated access token from the fake identity
// platform through the authorization code + PKCE flow.
func fakeToken(t *testing.T, fake *fakeo365.Server, mailbox string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := consent.Browser{
		ClientID: "test-client", AuthURL: fake.AuthURL("contoso"), TokenURL: fake.TokenURL("contoso"),
		Scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"}, LoginHint: mailbox,
	}.Run(ctx, func(u string) error {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

func startFake(t *testing.T, cfg fakeo365.Config) *fakeo365.Server {
	t.Helper()
	cfg.Dir = t.TempDir()
	fake, err := fakeo365.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	return fake
}

func TestXOAUTH2OnTheWire(t *testing.T) {
	fake := startFake(t, fakeo365.Config{})
	tok := fakeToken(t, fake, "alerts@contoso.com")
	c, err := smtp.DialStartTLS(fake.SMTPAddr(), &tls.Config{RootCAs: fake.CertPool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wire bytes.Buffer
	c.DebugWriter = &wire
	if err := c.Auth(NewXOAUTH2("alerts@contoso.com", tok)); err != nil {
		t.Fatalf("AUTH XOAUTH2 refused: %v", err)
	}
	wantLine := "AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user=alerts@contoso.com\x01auth=Bearer "+tok+"\x01\x01")) + "\r\n"
	if !strings.Contains(wire.String(), wantLine) {
		t.Fatalf("wire does not carry the one-line XOAUTH2 form:\n%s", wire.String())
	}
	if !strings.Contains(wire.String(), "235 ") {
		t.Fatalf("no 235 on the wire:\n%s", wire.String())
	}
}

func rendered(t *testing.T) *message.Rendered {
	m := &message.Message{ID: "t1", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "s", Text: "x"}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTransportSendAndClassify(t *testing.T) {
	fake := startFake(t, fakeo365.Config{})
	tok := fakeToken(t, fake, "alerts@contoso.com")
	tr := &Transport{}
	ep := Endpoint{Addr: fake.SMTPAddr(), CAFile: fake.CAFile()}
	ctx := context.Background()
	if err := tr.Send(ctx, ep, "alerts@contoso.com", tok, rendered(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Messages()); n != 1 {
		t.Fatalf("%d captured", n)
	}
	var se *SMTPError
	// A token for another mailbox: 535 5.7.3, class auth.
	err := tr.Send(ctx, ep, "other@contoso.com", tok, rendered(t))
	if !errors.As(err, &se) || se.Code != 535 || se.Enhanced != "5.7.3" || se.Class != ClassAuth || se.Stage != "auth" {
		t.Fatalf("wrong mailbox: %v", err)
	}
	if strings.Contains(err.Error(), tok) {
		t.Fatal("error text holds the token")
	}
	// Without the CA the certificate is not trusted: temporary, no AUTH sent.
	err = tr.Send(ctx, Endpoint{Addr: fake.SMTPAddr()}, "alerts@contoso.com", tok, rendered(t))
	if !errors.As(err, &se) || se.Stage != "tls" {
		t.Fatalf("untrusted certificate: %v", err)
	}
	fake.FailNextData(1)
	err = tr.Send(ctx, ep, "alerts@contoso.com", tok, rendered(t))
	if !errors.As(err, &se) || se.Reply() != "451 4.7.0 Temporary server error. Please try again later. PRX4" || se.Class != ClassTransient {
		t.Fatalf("451: %v", err)
	}
	if fake.OpenConns() != 0 {
		// Connections close before Send returns... give the server a moment
		// to notice, without sleeping blind.
		deadline := time.Now().Add(5 * time.Second)
		for fake.OpenConns() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := fake.OpenConns(); n != 0 {
			t.Fatalf("%d SMTP connections leaked", n)
		}
	}
}

func TestTransportRefusesServerWithoutSTARTTLS(t *testing.T) {
	// A plain go-smtp server without TLS: the relay must not AUTH.
	be := smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return plainSession{}, nil })
	srv := smtp.NewServer(be)
	srv.Addr = "127.0.0.1:0"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	err = (&Transport{}).Send(context.Background(), Endpoint{Addr: ln.Addr().String()}, "a@b.com", "secret-token", rendered(t))
	var se *SMTPError
	if !errors.As(err, &se) || se.Class != ClassConfig || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("want a config error about STARTTLS, got %v", err)
	}
}

// plainSession accepts everything; it exists only to answer EHLO.
type plainSession struct{}

func (plainSession) Reset()                               {}
func (plainSession) Logout() error                        { return nil }
func (plainSession) Mail(string, *smtp.MailOptions) error { return nil }
func (plainSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (plainSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }

// TestStrictServerTakesTheLongToken: a server that keeps SMTP's 512-octet
// command line (the fake in strict mode answers 500 5.5.2 to a longer
// one) gets the Office 365 sized XOAUTH2 response after an empty 334
// (RFC 4954 §4), from the relay's sessions and from the consent step's
// test mail alike (both are Transport).
func TestStrictServerTakesTheLongToken(t *testing.T) {
	fake := startFake(t, fakeo365.Config{Strict: true})
	tok := fakeToken(t, fake, "alerts@contoso.com")
	if len(tok) < 1000 {
		t.Fatalf("token of %d characters; the test needs an Office 365 sized one", len(tok))
	}
	ep := Endpoint{Addr: fake.SMTPAddr(), CAFile: fake.CAFile()}
	if err := (&Transport{}).Send(context.Background(), ep, "alerts@contoso.com", tok, rendered(t)); err != nil {
		t.Fatalf("send through a strict server: %v", err)
	}
	if n := len(fake.Messages()); n != 1 {
		t.Fatalf("%d messages captured", n)
	}
}
