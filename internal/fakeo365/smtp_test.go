package fakeo365

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relay365/internal/testutil"
)

func TestSMTPCapabilities(t *testing.T) {
	s := startServer(t, Config{})
	c, err := smtp.Dial(s.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"STARTTLS", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8", "DSN", "BINARYMIME"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO before TLS lacks %s", ext)
		}
	}
	if _, size := c.Extension("SIZE"); size != "157286400" {
		t.Errorf("SIZE %q, want 157286400", size)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}
	if err := c.Mail(testMailbox, nil); err == nil {
		t.Error("MAIL accepted on a plain connection without AUTH")
	}

	secure := dialTLS(t, s)
	if err := secure.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := secure.Extension("AUTH"); !ok || mechs != "LOGIN XOAUTH2" {
		t.Errorf("AUTH after TLS = %v %q, want LOGIN XOAUTH2", ok, mechs)
	}
	if ok, _ := secure.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised again after TLS")
	}
	if state, ok := secure.TLSConnectionState(); !ok || state.Version < tls.VersionTLS12 {
		t.Errorf("TLS state %v, version %x", ok, state.Version)
	}
}

func TestSMTPCertificate(t *testing.T) {
	s := startServer(t, Config{Hostname: "smtp.fake.test"})
	pem, err := os.ReadFile(s.CAFile())
	if err != nil || !bytes.Contains(pem, []byte("BEGIN CERTIFICATE")) {
		t.Fatalf("CA file %s: %v", s.CAFile(), err)
	}
	// Host name, not only the IP, is in the certificate.
	c := dialTLSConfig(t, s, &tls.Config{ServerName: "smtp.fake.test"})
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	// TLS 1.0/1.1 is refused (the handshake runs with the first command
	// after STARTTLS).
	old, err := smtp.DialStartTLS(s.SMTPAddr(), &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		defer old.Close()
		err = old.Noop()
	}
	if err == nil {
		t.Error("TLS 1.1 session accepted")
	}
}

func TestXOAUTH2BothForms(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)
	for _, twoStep := range []bool{false, true} {
		c := dialTLS(t, s)
		if err := c.Auth(&xoauth2Client{user: "Alerts@Contoso.com", token: token, twoStep: twoStep}); err != nil {
			t.Fatalf("XOAUTH2 (twoStep=%v): %v", twoStep, err)
		}
		if err := send(c, testMailbox); err != nil {
			t.Fatalf("send (twoStep=%v): %v", twoStep, err)
		}
		if err := c.Quit(); err != nil {
			t.Errorf("QUIT: %v", err)
		}
	}
	if n := len(s.Messages()); n != 2 {
		t.Errorf("%d messages captured, want 2", n)
	}
	if r := s.Replies(); len(r) != 0 {
		t.Errorf("non-2xx replies %v", r)
	}
}

func TestSMTPAuthRejections(t *testing.T) {
	clock := newFakeClock()
	s := startServer(t, Config{Now: clock.Now})
	token := delegatedToken(t, s, testMailbox)
	graphToken := signIn(t, oauthConfig(s, "https://graph.microsoft.com/Mail.Send"), testMailbox).AccessToken
	authFailed := smtp.EnhancedCode{5, 7, 3}

	tests := []struct {
		name     string
		auth     sasl.Client
		setup    func()
		code     int
		enhanced smtp.EnhancedCode
	}{
		{name: "wrong user", auth: &xoauth2Client{user: "ceo@contoso.com", token: token}, code: 535, enhanced: authFailed},
		{name: "unknown token", auth: &xoauth2Client{user: testMailbox, token: "bm90LWEtdG9rZW4"}, code: 535, enhanced: authFailed},
		{name: "graph audience", auth: &xoauth2Client{user: testMailbox, token: graphToken}, code: 535, enhanced: authFailed},
		{name: "expired", auth: &xoauth2Client{user: testMailbox, token: token, twoStep: true},
			setup: func() { clock.Advance(time.Hour) }, code: 535, enhanced: authFailed},
		{name: "malformed", auth: rawSASL{mech: "XOAUTH2", ir: []byte("user=" + testMailbox + "\x01auth=" + token + "\x01\x01")},
			code: 501, enhanced: smtp.EnhancedCode{5, 5, 124}},
		{name: "basic auth", auth: sasl.NewLoginClient(testMailbox, "hunter2"), code: 535, enhanced: smtp.EnhancedCode{5, 7, 139}},
		{name: "unknown mechanism", auth: sasl.NewPlainClient("", testMailbox, "hunter2"), code: 504, enhanced: smtp.EnhancedCode{5, 7, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			c := dialTLS(t, s)
			se := wantSMTPError(t, c.Auth(tt.auth), tt.code, tt.enhanced)
			if tt.code == 535 && tt.enhanced == authFailed && se.Message != "Authentication unsuccessful [fake.outlook.office365.test]" {
				t.Errorf("message %q", se.Message)
			}
		})
	}
	want := map[string]int{"535 5.7.3": 4, "501 5.5.124": 1, "535 5.7.139": 1, "504 5.7.4": 1}
	if got := s.Replies(); !equalCounts(got, want) {
		t.Errorf("Replies = %v, want %v", got, want)
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestDisableSMTPAuth(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)
	s.DisableSMTPAuth(testTenant, true)
	c := dialTLS(t, s)
	se := wantSMTPError(t, c.Auth(&xoauth2Client{user: testMailbox, token: token}), 535, smtp.EnhancedCode{5, 7, 139})
	if se.Message != "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information." {
		t.Errorf("message %q", se.Message)
	}
	s.DisableSMTPAuth(testTenant, false)
	authedClient(t, s, testMailbox, token)
}

func TestMailBeforeAuth(t *testing.T) {
	s := startServer(t, Config{})
	c := dialTLS(t, s)
	wantSMTPError(t, c.Mail(testMailbox, nil), 530, smtp.EnhancedCode{5, 7, 57})
	if n := s.Replies()["530 5.7.57"]; n != 1 {
		t.Errorf("Replies[530 5.7.57] = %d, want 1", n)
	}
}

func TestAppOnlyToken(t *testing.T) {
	s := startServer(t, Config{})
	s.RegisterApp("daemon-app", "s3cret")
	_, ans, _ := postForm(t, s.TokenURL(testTenant), map[string][]string{
		"grant_type": {GrantClientCredentials}, "client_id": {"daemon-app"}, "client_secret": {"s3cret"}, "scope": {appScope}})
	if ans.AccessToken == "" {
		t.Fatalf("client_credentials: %+v", ans.errorBody)
	}
	c := authedClient(t, s, "noreply@contoso.com", ans.AccessToken)
	if err := send(c, "noreply@contoso.com"); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, sendMessage(c, "noreply@contoso.com", []string{"ops@fabrikam.com"}, testMessage(testMailbox, "other From")),
		550, smtp.EnhancedCode{5, 7, 60})
	if msgs := s.Messages(); len(msgs) != 1 || msgs[0].Mailbox != "noreply@contoso.com" {
		t.Errorf("messages %+v", msgs)
	}
}

func TestSendAs(t *testing.T) {
	s := startServer(t, Config{})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	msg := testMessage("NoReply@contoso.com", "send as")
	se := wantSMTPError(t, sendMessage(c, testMailbox, []string{"ops@fabrikam.com"}, msg), 550, smtp.EnhancedCode{5, 7, 60})
	if se.Message != "SMTP; Client does not have permissions to send as this sender" {
		t.Errorf("message %q", se.Message)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages captured after 5.7.60", n)
	}
	s.SetSendAs("Alerts@contoso.com", "noreply@contoso.com")
	if err := sendMessage(c, testMailbox, []string{"ops@fabrikam.com"}, msg); err != nil {
		t.Fatalf("send with SendAs: %v", err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || msgs[0].HeaderFrom != "NoReply@contoso.com" {
		t.Errorf("messages %+v", msgs)
	}
}

func TestFailNextData(t *testing.T) {
	s := startServer(t, Config{})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	s.FailNextData(1)
	se := wantSMTPError(t, send(c, testMailbox), 451, smtp.EnhancedCode{4, 7, 0})
	if se.Message != "Temporary server error. Please try again later. PRX4" {
		t.Errorf("message %q", se.Message)
	}
	if err := send(c, testMailbox); err != nil {
		t.Fatalf("send after the injected 451: %v", err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
	if n := s.Replies()["451 4.7.0"]; n != 1 {
		t.Errorf("Replies[451 4.7.0] = %d", n)
	}
}

func TestDropNextData(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)
	c := authedClient(t, s, testMailbox, token)
	s.DropNextData(1)
	err := send(c, testMailbox)
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("dropped DATA: got %v, want a connection error without SMTP reply", err)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages captured from a dropped DATA", n)
	}
	waitFor(t, "the dropped connection to close", func() bool { return s.OpenConns() == 0 })

	c = authedClient(t, s, testMailbox, token)
	if err := send(c, testMailbox); err != nil {
		t.Fatalf("send on a new connection: %v", err)
	}
}

func TestConcurrentConnectionLimit(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)
	clients := make([]*smtp.Client, 4)
	for i := range clients {
		clients[i] = authedClient(t, s, testMailbox, token)
	}
	se := wantSMTPError(t, send(clients[3], testMailbox), 432, smtp.EnhancedCode{4, 3, 2})
	if se.Message != "STOREDRV.ClientSubmit; sender thread limit exceeded" {
		t.Errorf("message %q", se.Message)
	}
	// Another mailbox is not affected.
	other := authedClient(t, s, "ops@contoso.com", delegatedToken(t, s, "ops@contoso.com"))
	if err := send(other, "ops@contoso.com"); err != nil {
		t.Errorf("other mailbox: %v", err)
	}

	if err := clients[0].Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to close the connection", func() bool { return s.OpenConns() == 4 })
	if err := send(clients[3], testMailbox); err != nil {
		t.Errorf("send with 3 connections: %v", err)
	}
}

func TestPerMinuteLimit(t *testing.T) {
	clock := newFakeClock()
	s := startServer(t, Config{Now: clock.Now, PerMinute: 2})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	for i := range 2 {
		if err := send(c, testMailbox); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	se := wantSMTPError(t, send(c, testMailbox), 554, smtp.EnhancedCode{5, 2, 0})
	if se.Message != replyQuota.Message {
		t.Errorf("message %q", se.Message)
	}
	clock.Advance(time.Minute)
	if err := send(c, testMailbox); err != nil {
		t.Errorf("send a minute later: %v", err)
	}
	if n := s.Replies()["554 5.2.0"]; n != 1 {
		t.Errorf("Replies[554 5.2.0] = %d, want 1", n)
	}
}

func TestPerDayAndRecipientLimits(t *testing.T) {
	clock := newFakeClock()
	s := startServer(t, Config{Now: clock.Now, PerDay: 3, MaxRecipients: 2})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	two := []string{"a@fabrikam.com", "b@fabrikam.com"}
	msg := testMessage(testMailbox, "daily")

	if err := sendMessage(c, testMailbox, two, msg); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, sendMessage(c, testMailbox, two, msg), 554, smtp.EnhancedCode{5, 2, 0})
	if err := sendMessage(c, testMailbox, two[:1], msg); err != nil {
		t.Fatalf("third recipient of the day: %v", err)
	}
	clock.Advance(24 * time.Hour)
	if err := sendMessage(c, testMailbox, two, msg); err != nil {
		t.Fatalf("next day: %v", err)
	}
	wantSMTPError(t, sendMessage(c, testMailbox, []string{"a@x.test", "b@x.test", "c@x.test"}, msg), 452, smtp.EnhancedCode{4, 5, 3})
}

func TestQuotaExceeded(t *testing.T) {
	s := startServer(t, Config{})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	s.SetQuotaExceeded("ALERTS@contoso.com", true)
	wantSMTPError(t, send(c, testMailbox), 554, smtp.EnhancedCode{5, 2, 0})
	s.SetQuotaExceeded(testMailbox, false)
	if err := send(c, testMailbox); err != nil {
		t.Fatal(err)
	}
}

func TestCapturedMessage(t *testing.T) {
	clock := newFakeClock()
	mailDir := filepath.Join(t.TempDir(), "mail")
	s := startServer(t, Config{Now: clock.Now, MailDir: mailDir})
	ctx := testContext(t)

	waited := make(chan []Message, 1)
	go func() {
		msgs, err := s.WaitMessages(ctx, 1)
		if err != nil {
			t.Errorf("WaitMessages: %v", err)
		}
		waited <- msgs
	}()

	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	data := testMessage(testMailbox, "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=")
	to := []string{"ops@fabrikam.com", "oncall@fabrikam.com"}
	if err := sendMessage(c, "bounces@contoso.com", to, data); err != nil {
		t.Fatal(err)
	}

	msgs := <-waited
	if len(msgs) != 1 {
		t.Fatalf("WaitMessages returned %d messages", len(msgs))
	}
	m := msgs[0]
	if m.Mailbox != testMailbox || m.From != "bounces@contoso.com" || len(m.To) != 2 || m.To[1] != "oncall@fabrikam.com" ||
		!bytes.Equal(m.Data, data) || m.Subject != "Grüße aus Köln" || m.HeaderFrom != testMailbox || !m.Time.Equal(clock.Now()) {
		t.Errorf("captured %+v", m)
	}

	files, err := filepath.Glob(filepath.Join(mailDir, "*-1.eml"))
	if err != nil || len(files) != 1 {
		t.Fatalf("MailDir files %v, %v", files, err)
	}
	if eml, err := os.ReadFile(files[0]); err != nil || !bytes.Equal(eml, data) {
		t.Errorf("eml content %q, %v", eml, err)
	}
	if st, err := os.Stat(files[0]); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("eml file mode %v %v, want 0600: captured mail is readable by the sandbox's user only", st.Mode(), err)
	}
	if st, err := os.Stat(mailDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("mail folder mode %v %v, want 0700", st.Mode(), err)
	}

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if got, err := s.WaitMessages(short, 2); !errors.Is(err, context.DeadlineExceeded) || len(got) != 1 {
		t.Errorf("WaitMessages(2) = %d messages, %v; want 1, deadline exceeded", len(got), err)
	}
}

func TestOpenConnsAndClose(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)
	a := authedClient(t, s, testMailbox, token)
	b := dialTLS(t, s)
	if n := s.OpenConns(); n != 2 {
		t.Errorf("OpenConns = %d, want 2", n)
	}
	for _, c := range []*smtp.Client{a, b} {
		if err := c.Quit(); err != nil {
			t.Errorf("QUIT: %v", err)
		}
	}
	waitFor(t, "OpenConns to return to 0", func() bool { return s.OpenConns() == 0 })

	c := authedClient(t, s, testMailbox, token)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := s.OpenConns(); n != 0 {
		t.Errorf("OpenConns after Close = %d", n)
	}
	if err := c.Noop(); err == nil {
		t.Error("connection still usable after Close")
	}
	if _, err := s.WaitMessages(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitMessages after Close: %v, want ErrClosed", err)
	}
}

func TestActivityLogHasNoSecrets(t *testing.T) {
	var logs testutil.Buffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	s := startServer(t, Config{Logger: &logger})
	tok := signIn(t, oauthConfig(s, smtpScope, "offline_access"), testMailbox)
	c := authedClient(t, s, testMailbox, tok.AccessToken)
	if err := send(c, testMailbox); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "message accepted") || !strings.Contains(out, "token issued") {
		t.Errorf("activity log lacks events:\n%s", out)
	}
	for _, secret := range []string{tok.AccessToken, tok.RefreshToken} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains a token:\n%s", out)
		}
	}
}

// TestCountOnly: a sink for many messages keeps none, counts them all,
// calls OnAccept with each, and WaitMessages still waits for the count.
func TestCountOnly(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	s := startServer(t, Config{PerMinute: -1, PerDay: -1, CountOnly: true, OnAccept: func(m Message) {
		mu.Lock()
		seen = append(seen, m.Subject)
		mu.Unlock()
	}})
	c := authedClient(t, s, "alerts@contoso.com", delegatedToken(t, s, "alerts@contoso.com"))
	for range 3 {
		if err := send(c, "alerts@contoso.com"); err != nil {
			t.Fatal(err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := s.WaitMessages(testContext(t), 3)
	if err != nil || len(msgs) != 0 || s.Accepted() != 3 || len(s.Messages()) != 0 {
		t.Fatalf("WaitMessages: %d messages, %v; Accepted %d; Messages %d: want 0 kept of 3 accepted", len(msgs), err, s.Accepted(), len(s.Messages()))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != "alert" {
		t.Fatalf("OnAccept saw %q", seen)
	}
}

// TestStrictLineLimits: in strict mode the fake keeps SMTP's limits as
// servers other than Office 365 do. An Office 365 sized token on the AUTH
// line (a 2 KB command) is refused 500 5.5.2 there and accepted in the
// default, tolerant mode; after an empty 334 it is fine either way; a
// message with a bare LF or a line over 998 octets is refused 554 5.6.0.
func TestStrictLineLimits(t *testing.T) {
	// A bare LF cannot be sent with go-smtp's client (it writes CRLF for
	// it); badText is checked on its own for that.
	for in, want := range map[string]string{
		"a\r\nb\r\n": "", "a\nb": "bare LF at octet 1", "a\rb": "bare CR at octet 1", "\n": "bare LF at octet 0",
		strings.Repeat("x", 998) + "\r\n": "", strings.Repeat("x", 999) + "\r\n": "a line of 999 octets (at most 998 and CRLF)",
		strings.Repeat("x", 999): "a line of 999 octets (at most 998 and CRLF)",
	} {
		if got := badText([]byte(in)); got != want {
			t.Errorf("badText(%.20q…) = %q, want %q", in, got, want)
		}
	}
	for _, strict := range []bool{false, true} {
		s := startServer(t, Config{Strict: strict})
		token := delegatedToken(t, s, testMailbox)
		if len(token) < 1000 {
			t.Fatalf("access token of %d characters: Office 365's are 1.5-2.5 KB", len(token))
		}
		err := dialTLS(t, s).Auth(&xoauth2Client{user: testMailbox, token: token})
		switch {
		case strict:
			wantSMTPError(t, err, 500, smtp.EnhancedCode{5, 5, 2})
		case err != nil:
			t.Fatalf("tolerant: the long AUTH line is refused: %v", err)
		}
		c := dialTLS(t, s)
		if err := c.Auth(&xoauth2Client{user: testMailbox, token: token, twoStep: true}); err != nil {
			t.Fatalf("strict=%v: the two-step form: %v", strict, err)
		}
		for name, data := range map[string][]byte{
			"bare CR":     []byte("From: " + testMailbox + "\r\nSubject: x\r\n\r\nbo\rdy\r\n"),
			"999 octets":  []byte("From: " + testMailbox + "\r\nSubject: x\r\n\r\n" + strings.Repeat("x", 999) + "\r\n"),
			"long header": []byte("From: " + testMailbox + "\r\nSubject: " + strings.Repeat("y", 1990) + "\r\n\r\nbody\r\n"),
		} {
			err := sendMessage(c, testMailbox, []string{"ops@contoso.com"}, data)
			if !strict {
				if err != nil {
					t.Fatalf("tolerant: %s refused: %v", name, err)
				}
				continue
			}
			if se := (&smtp.SMTPError{}); !errors.As(err, &se) || se.Code != 554 {
				t.Errorf("strict: %s: %v, want 554 5.6.0", name, err)
			}
		}
		ok := []byte("From: " + testMailbox + "\r\nSubject: x\r\n\r\n" + strings.Repeat("x", 998) + "\r\n")
		if err := sendMessage(c, testMailbox, []string{"ops@contoso.com"}, ok); err != nil {
			t.Fatalf("strict=%v: a 998-octet line is refused: %v", strict, err)
		}
	}
}
