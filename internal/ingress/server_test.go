package ingress_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	rtestutil "relay365/internal/testutil"
	"relay365/internal/token/tokentest"
)

const (
	alertsPassword = "correct horse battery staple"
	otherPassword  = "another long password"
)

// frontDoor is a real embedded JetStream, the account and producer
// registries, and the SMTP front door on loopback with its own CA.
type frontDoor struct {
	t        *testing.T
	ctx      context.Context
	env      *queuetest.Env
	accounts *account.Registry
	prods    *ingress.Producers
	srv      *ingress.Server
	reg      *prometheus.Registry
	clock    *clock.Fake
	roots    *x509.CertPool
	logs     *rtestutil.Buffer
}

func startFrontDoor(t *testing.T, mod func(*ingress.Config)) *frontDoor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	f := &frontDoor{t: t, ctx: ctx, env: queuetest.Start(t), reg: prometheus.NewRegistry(),
		clock: clock.NewFake(time.Now()), logs: &rtestutil.Buffer{}}
	if err := queue.EnsureStreams(ctx, f.env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.accounts, err = account.OpenRegistry(ctx, f.env.JS); err != nil {
		t.Fatal(err)
	}
	if f.prods, err = ingress.OpenProducers(ctx, f.env.JS); err != nil {
		t.Fatal(err)
	}
	for _, a := range []account.Account{
		{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"},
		{Alias: "billing", Mailbox: "billing@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"},
		{Alias: "strict", Mailbox: "strict@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", FromPolicy: message.PolicyReject},
	} {
		a.Normalize()
		if err := f.accounts.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.prods.Put(ctx, "alertmanager", []string{"alerts", "strict"}, alertsPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := f.prods.Put(ctx, "ghost", []string{"nobody"}, otherPassword); err != nil {
		t.Fatal(err)
	}
	tlsConf, caFile, err := ingress.LoopbackTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	f.roots = x509.NewCertPool()
	f.roots.AppendCertsFromPEM(pem)
	cfg := ingress.Config{Listen: "127.0.0.1:0", ListenTLS: "127.0.0.1:0", TLS: tlsConf, Hostname: "relay.test", PublishTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	f.srv, err = ingress.Start(ctx, cfg, ingress.Deps{
		JS: f.env.JS, Accounts: f.accounts, Producers: f.prods, Registry: f.reg,
		Log: zerolog.New(f.logs), Clock: f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.srv.Close()
		if strings.Contains(f.logs.String(), alertsPassword) || strings.Contains(f.logs.String(), otherPassword) {
			t.Error("a password is in the logs")
		}
		if t.Failed() {
			t.Logf("logs:\n%s", f.logs.String())
		}
	})
	return f
}

func (f *frontDoor) addr() string    { return f.srv.Addr().String() }
func (f *frontDoor) tlsAddr() string { return f.srv.TLSAddr().String() }

func (f *frontDoor) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: f.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// dial connects with STARTTLS, from local address from ("" for any).
func (f *frontDoor) dial(from string) *smtp.Client {
	f.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.Dial("tcp", f.addr())
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := smtp.NewClientStartTLS(conn, f.tlsConfig())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// login dials and authenticates with PLAIN.
func (f *frontDoor) login(name, password string) *smtp.Client {
	f.t.Helper()
	c := f.dial("")
	if err := c.Auth(sasl.NewPlainClient("", name, password)); err != nil {
		f.t.Fatalf("AUTH as %s: %v", name, err)
	}
	return c
}

// send runs one transaction and returns the final error.
func send(c *smtp.Client, from string, to []string, data string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	return sendData(c, data)
}

// sendData sends data as the open transaction's DATA and returns the
// reply to its end (the error of DATA itself, or of writing, before).
func sendData(c *smtp.Client, data string) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(data)); err != nil {
		return err
	}
	return w.Close()
}

// queued reads every message in MAIL.
func (f *frontDoor) queued() []jetstream.RawStreamMsg {
	f.t.Helper()
	s, err := f.env.JS.Stream(f.ctx, queue.StreamMail)
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := s.Info(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(f.ctx, seq)
		if err != nil {
			continue
		}
		out = append(out, *m)
	}
	return out
}

// onlyQueued is the one message in MAIL, decoded; it fails the test when
// MAIL holds another number.
func (f *frontDoor) onlyQueued() *message.Message {
	f.t.Helper()
	msgs := f.queued()
	if len(msgs) != 1 {
		f.t.Fatalf("%d queued, want 1", len(msgs))
	}
	m, err := message.Decode(msgs[0].Data)
	if err != nil {
		f.t.Fatal(err)
	}
	return m
}

func wantReply(t *testing.T, what string, err error, code int, enhanced string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: want %d %s, got %v", what, code, enhanced, err)
	}
	got := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.Code != code || got != enhanced {
		t.Fatalf("%s: got %d %s %q, want %d %s", what, se.Code, got, se.Message, code, enhanced)
	}
}

const alertmanagerMail = "From: Alertmanager <alertmanager@example.org>\r\n" +
	"To: ops@contoso.com\r\nSubject: [FIRING:1] HighLoad web-3\r\n" +
	"Date: Sat, 05 Dec 2026 09:30:00 +0000\r\nMessage-Id: <am-1@example.org>\r\n\r\nload 17.2\r\n"

func TestSubmissionIsQueuedAsSentWithTheEnvelope(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "alertmanager@example.org", []string{"ops@contoso.com", "hidden@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	msgs := f.queued()
	if len(msgs) != 1 || msgs[0].Subject != "mail.send.alerts" {
		t.Fatalf("queued %d messages (%v), want one on mail.send.alerts", len(msgs), msgs)
	}
	m, err := message.Decode(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Account != "alerts" || strings.Join(m.To, ",") != "ops@contoso.com,hidden@contoso.com" || msgs[0].Header.Get(jetstream.MsgIDHeader) != m.ID {
		t.Fatalf("queued message %+v, header %v", m, msgs[0].Header)
	}
	raw := string(m.Raw)
	if !strings.HasPrefix(raw, "Received: from ") || !strings.Contains(raw, "by relay.test (Relay365) with ESMTPSA id "+m.ID) || !strings.HasSuffix(raw, alertmanagerMail) {
		t.Fatalf("queued raw message is not the one sent plus a Received field:\n%s", raw)
	}
	// As the worker renders it: From policy rewrite, the original to Reply-To.
	r, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(r.Data), "From: \"Alertmanager\" <alerts@contoso.com>\r\nReply-To: \"Alertmanager\" <alertmanager@example.org>\r\n") {
		t.Fatalf("rendered:\n%s", r.Data)
	}
	if n := ingressCount(t, f.reg, "alertmanager", "accepted"); n != 1 {
		t.Fatalf("relay_ingress_messages_total{accepted} = %v", n)
	}
}

// TestDateIsTheSubmissionTime: a message submitted without a Date field
// leaves with the time it was submitted, the origination date (RFC 5322
// §3.6.1; RFC 6409 §8.2 lets the MSA add it), not the time a worker
// renders it, which is hours later for an account paused that long and
// differs between two deliveries of the same message. Found with Python's
// smtplib, which adds no Date field.
func TestDateIsTheSubmissionTime(t *testing.T) {
	f := startFrontDoor(t, nil)
	submitted := f.clock.Now()
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, "To: ops@contoso.com\r\nSubject: no date\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	m := f.onlyQueued()
	r, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com"}, submitted.Add(5*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := "\r\nDate: " + submitted.Format(time.RFC1123Z) + "\r\n"
	if got := string(r.Data); !strings.Contains(got, want) || strings.Count(got, "\r\nDate:") != 1 {
		t.Fatalf("rendered five hours after the submission, want one Date field of the submission time %q:\n%s", want, got)
	}
	// A Date the client wrote is kept as it is, and none is added.
	c = f.login("alertmanager", alertsPassword)
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	msgs := f.queued()
	m2, err := message.Decode(msgs[len(msgs)-1].Data)
	if err != nil {
		t.Fatal(err)
	}
	if raw := string(m2.Raw); strings.Count(raw, "Date:") != 1 || !strings.Contains(raw, "Date: Sat, 05 Dec 2026 09:30:00 +0000\r\n") {
		t.Fatalf("the client's Date field not kept alone:\n%s", raw)
	}
}

// TestReceivedFromIPv6: the Received field names a client on IPv6 by an
// IPv6 address literal, "[IPv6:::1]" (RFC 5321 §4.1.3, §4.4), and one
// whose EHLO name has nothing usable by its address.
func TestReceivedFromIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	f := startFrontDoor(t, func(c *ingress.Config) { c.ListenTLS = "[::1]:0" })
	conn, err := tls.Dial("tcp", f.tlsAddr(), f.tlsConfig())
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("(;)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	m := f.onlyQueued()
	if want := "Received: from [IPv6:::1] ([IPv6:::1])\r\n\tby relay.test "; !strings.HasPrefix(string(m.Raw), want) {
		t.Fatalf("queued raw begins %q, want %q", m.Raw[:min(len(m.Raw), 80)], want)
	}
}

// TestReceivedHELOIsADomain: the Received field's FROM clause holds a
// domain or an address literal (RFC 5321 §4.4), so of an EHLO argument
// only the characters those are made of are kept. A quote or a backslash
// (found with a raw client's EHLO) began a quoted-string of RFC 5322's
// received-token syntax (§3.6.7) that ran over the rest of the field.
func TestReceivedHELOIsADomain(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.dial("")
	if err := c.Hello(`Printer_3."b\\c<d>e@f,g!h`); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	if want := "Received: from Printer_3.bcdefgh ([127.0.0.1])\r\n"; !strings.HasPrefix(string(f.onlyQueued().Raw), want) {
		t.Fatalf("queued raw begins %q, want %q", f.onlyQueued().Raw[:80], want)
	}
}

// ingressCount is relay_ingress_messages_total{producer,result}.
func ingressCount(t *testing.T, reg *prometheus.Registry, producer, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "relay_ingress_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["producer"] == producer && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestImplicitTLSAndLOGIN(t *testing.T) {
	f := startFrontDoor(t, nil)
	c, err := smtp.DialTLS(f.tlsAddr(), f.tlsConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient("alertmanager", alertsPassword)); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	if n := len(f.queued()); n != 1 {
		t.Fatalf("%d queued", n)
	}
}

func TestCapabilitiesAndNoAuthBeforeTLS(t *testing.T) {
	f := startFrontDoor(t, nil)
	c, err := smtp.Dial(f.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS", "SIZE"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO lacks %s", ext)
		}
	}
	if _, size := c.Extension("SIZE"); size != fmt.Sprint(message.MaxSize) {
		t.Errorf("SIZE %q, want %d (Office 365's limit)", size, message.MaxSize)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before TLS")
	}
	// RFC 4954 §6: 538 5.7.11, encryption required for the mechanism
	// (go-smtp's own answer is 523 5.7.10, which RFC 4954 does not name).
	wantReply(t, "AUTH PLAIN before TLS", c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)), 538, "5.7.11")
	wantReply(t, "AUTH LOGIN before TLS", c.Auth(sasl.NewLoginClient("alertmanager", alertsPassword)), 538, "5.7.11")
	if n := f.srv.PasswordHashes(); n != 0 {
		t.Fatalf("%d passwords checked before TLS", n)
	}
	// Counted, so a client leaking its password in cleartext is noticed.
	if n := tokentest.Metric(t, f.reg, "relay_ingress_auth_failures_total", map[string]string{"reason": "cleartext"}); n != 2 {
		t.Fatalf("relay_ingress_auth_failures_total{reason=cleartext} = %v, want 2", n)
	}
	wantReply(t, "MAIL after AUTH before TLS", c.Mail("alerts@contoso.com", nil), 530, "5.7.0")
	after := f.dial("")
	if ok, mechs := after.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") || !strings.Contains(mechs, "LOGIN") {
		t.Fatalf("after STARTTLS AUTH = %v %q", ok, mechs)
	}
}

// A line longer than the listener reads (64 KiB; SMTP allows 1,000) is
// refused saying so, not with go-smtp's bare "too long a line".
func TestLineOverTheListenersLimit(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword)
	err := send(c, "", []string{"ops@contoso.com"}, "To: ops@contoso.com\r\nX-Long: "+strings.Repeat("y", 70<<10)+"\r\n\r\nbody\r\n")
	wantReply(t, "DATA", err, 554, "5.6.0")
	if !strings.Contains(err.Error(), "a line longer than") {
		t.Errorf("reply %v: want it to name the long line", err)
	}
}

func TestReplies(t *testing.T) {
	f := startFrontDoor(t, func(c *ingress.Config) { c.MaxMessageBytes = 4096 })
	t.Run("MAIL before AUTH: 530 5.7.0", func(t *testing.T) {
		c := f.dial("")
		wantReply(t, "MAIL", c.Mail("a@example.org", nil), 530, "5.7.0")
	})
	t.Run("wrong password: 535 5.7.8", func(t *testing.T) {
		c := f.dial("127.0.0.9") // its own address: the backoff of this test stays its own
		wantReply(t, "AUTH", c.Auth(sasl.NewPlainClient("", "alertmanager", "wrong")), 535, "5.7.8")
	})
	t.Run("AUTH PLAIN acting for another producer (authzid): 535 5.7.8", func(t *testing.T) {
		// alertmanager's own password, asking to act as ghost: neither
		// identity is granted, so no session may mix the two.
		c := f.dial("127.0.0.10")
		wantReply(t, "AUTH", c.Auth(sasl.NewPlainClient("ghost", "alertmanager", alertsPassword)), 535, "5.7.8")
		wantReply(t, "MAIL after the refused AUTH", c.Mail("alerts@contoso.com", nil), 530, "5.7.0")
	})
	t.Run("the envelope sender is an account the producer may not use: 550 5.7.1", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "MAIL", c.Mail("billing@contoso.com", nil), 550, "5.7.1")
	})
	t.Run("the From field is an account the producer may not use: 550 5.7.1", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, "From: billing@contoso.com\r\nTo: ops@contoso.com\r\n\r\nx\r\n"), 550, "5.7.1")
	})
	t.Run("the From field, its name in a legacy charset, is an account the producer may not use: 550 5.7.1", func(t *testing.T) {
		// Read as any RFC 2047 charset: not taken for no From, and sent
		// through the producer's first account.
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, "From: =?windows-1252?Q?Caf=E9_=80?= <billing@contoso.com>\r\nTo: ops@contoso.com\r\n\r\nx\r\n"), 550, "5.7.1")
	})
	t.Run("the account's From policy refuses the From: 550 5.7.1", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		// The envelope picks account strict (policy reject), whose mailbox is not the From.
		wantReply(t, "DATA", send(c, "strict@contoso.com", []string{"ops@contoso.com"}, "From: other@example.org\r\nTo: ops@contoso.com\r\n\r\nx\r\n"), 550, "5.7.1")
	})
	t.Run("SIZE over the limit at MAIL: 552 5.3.4", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "MAIL", c.Mail("a@example.org", &smtp.MailOptions{Size: 5000}), 552, "5.3.4")
	})
	t.Run("DATA over the limit: 552 5.3.4", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		big := "To: ops@contoso.com\r\n\r\n" + strings.Repeat("x", 70) + "\r\n"
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, strings.Repeat(big, 80)), 552, "5.3.4")
	})
	t.Run("a message that cannot be parsed (a NUL byte): 554 5.6.0", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, "To: ops@contoso.com\r\nSubject: a\r\n\r\nbo\x00dy\r\n"), 554, "5.6.0")
	})
	t.Run("a body line over 998 octets: 554 5.6.0", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, "To: ops@contoso.com\r\n\r\n"+strings.Repeat("z", 1500)+"\r\n"), 554, "5.6.0")
	})
	t.Run("a bad recipient address: 501 5.1.3", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		if err := c.Mail("", nil); err != nil {
			t.Fatal(err)
		}
		wantReply(t, "RCPT", c.Rcpt(`"a b"@contoso.com`, nil), 501, "5.1.3")
	})
	t.Run("a control character in the sender: 501 5.1.7", func(t *testing.T) {
		// RFC 5321 §4.1.2 allows none in a Mailbox, quoted or not; go-smtp
		// passes NUL, ESC and the like on (found with a raw client: it
		// echoed them back in its 250).
		c := f.login("alertmanager", alertsPassword)
		for _, from := range []string{"a\x00b@example.org", "a@exam\x1bple.org", "\x7f@example.org"} {
			wantReply(t, fmt.Sprintf("MAIL FROM:<%q>", from), c.Mail(from, nil), 501, "5.1.7")
		}
		if err := c.Mail("alertmanager@example.org", nil); err != nil {
			t.Fatalf("MAIL after the refused ones: %v", err)
		}
	})
	t.Run("a non-ASCII address without SMTPUTF8: 553 5.6.7", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		wantReply(t, "MAIL", c.Mail("jörg@contoso.com", nil), 553, "5.6.7")
		if err := c.Mail("", nil); err != nil {
			t.Fatal(err)
		}
		wantReply(t, "RCPT", c.Rcpt("jörg@contoso.com", nil), 553, "5.6.7")
	})
	t.Run("no account of the producer is registered: 451 4.7.1", func(t *testing.T) {
		c := f.login("ghost", otherPassword)
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, alertmanagerMail), 451, "4.7.1")
	})
	t.Run("the stream is full: 452 4.3.1", func(t *testing.T) {
		s, err := f.env.JS.Stream(f.ctx, queue.StreamMail)
		if err != nil {
			t.Fatal(err)
		}
		c := f.login("alertmanager", alertsPassword)
		if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.MaxMsgs = 1
		if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
			t.Fatal(err)
		}
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, alertmanagerMail), 452, "4.3.1")
		cfg.MaxMsgs = -1
		if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if err := s.Purge(f.ctx); err != nil { // the one accepted before
			t.Fatal(err)
		}
	})
	if n := len(f.queued()); n != 0 {
		t.Fatalf("%d messages queued by refused transactions", n)
	}
	for result, want := range map[string]float64{"not_allowed": 4, "too_large": 1, "invalid": 2, "unavailable": 1, "full": 1} {
		if n := ingressCount(t, f.reg, "alertmanager", result) + ingressCount(t, f.reg, "ghost", result); n != want {
			t.Errorf("relay_ingress_messages_total{result=%q} = %v, want %v", result, n, want)
		}
	}
	t.Run("NATS is down: 451 4.3.0", func(t *testing.T) {
		c := f.login("alertmanager", alertsPassword)
		f.env.Server.Shutdown()
		f.env.Server.WaitForShutdown()
		wantReply(t, "DATA", send(c, "", []string{"ops@contoso.com"}, alertmanagerMail), 451, "4.3.0")
	})
}

// TestRefusedMAILKeepsTheTransaction: a MAIL refused inside a transaction
// leaves it as it was (RFC 5321 §4.1.4, "MUST stay in the same state"), as
// go-smtp keeps it: the DATA that follows goes to the recipients already
// accepted, not refused for having none.
func TestRefusedMAILKeepsTheTransaction(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword)
	if err := c.Mail("alertmanager@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ops@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	wantReply(t, "a second MAIL, not ASCII", c.Mail("jörg@example.org", nil), 553, "5.6.7")
	wantReply(t, "a second MAIL, another producer's account", c.Mail("billing@contoso.com", nil), 550, "5.7.1")
	if err := sendData(c, alertmanagerMail); err != nil {
		t.Fatalf("DATA after the refused MAILs: %v", err)
	}
	m := f.onlyQueued()
	if strings.Join(m.To, ",") != "ops@contoso.com" {
		t.Fatalf("queued to %v, want the recipient of the transaction", m.To)
	}
}

// TestNestedMAILIsRefused: a MAIL while a transaction is open is out of
// sequence (RFC 5321 §4.1.4) and refused 503 5.5.1, the transaction kept:
// the message goes to every recipient accepted with 250, before and after
// the refused MAIL, and never to the addresses of its header fields.
// Found with a raw client (Python): go-smtp accepted the second MAIL and
// the message went to the recipients given after it only, or, with none
// after it, to its To and Bcc fields.
func TestNestedMAILIsRefused(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword)
	if err := c.Mail("alerts@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("first@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	wantReply(t, "a second MAIL in the open transaction", c.Mail("alerts@contoso.com", nil), 503, "5.5.1")
	if err := c.Rcpt("second@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := sendData(c, "To: header-to@contoso.com\r\nBcc: header-bcc@contoso.com\r\nSubject: x\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if m := f.onlyQueued(); strings.Join(m.To, ",") != "first@contoso.com,second@contoso.com" {
		t.Fatalf("queued to %v, want the envelope's first@ and second@", m.To)
	}
	// After DATA (and after RSET) a new transaction may start.
	if err := c.Mail("alerts@contoso.com", nil); err != nil {
		t.Fatalf("MAIL after DATA: %v", err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alerts@contoso.com", nil); err != nil {
		t.Fatalf("MAIL after RSET: %v", err)
	}
}

// rawSASL is a SASL client that sends one initial response as it is.
type rawSASL struct{ mech, ir string }

func (r rawSASL) Start() (string, []byte, error) { return r.mech, []byte(r.ir), nil }
func (r rawSASL) Next([]byte) ([]byte, error)    { return nil, errors.New("no more") }

// TestMalformedAUTHResponse: a PLAIN response without its NULs is the
// client's syntax error, 501 5.5.2 (RFC 4954 §4), not 454 4.7.0, the
// temporary failure that has a client try the same again later.
func TestMalformedAUTHResponse(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.dial("127.0.0.6")
	wantReply(t, "AUTH PLAIN without NULs", c.Auth(rawSASL{"PLAIN", "alertmanager " + alertsPassword}), 501, "5.5.2")
	if err := c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)); err != nil {
		t.Fatalf("AUTH after the malformed one: %v", err)
	}
}

// TestFailedLoginsBackOff: three wrong passwords lock the client's address
// and the producer's name; while locked even the right password gets 454
// without being checked; the lock ends on its own.
func TestFailedLoginsBackOff(t *testing.T) {
	f := startFrontDoor(t, nil)
	attempt := func(from, name, password string) error {
		return f.dial(from).Auth(sasl.NewPlainClient("", name, password))
	}
	for i := range 3 {
		wantReply(t, fmt.Sprintf("failure %d", i+1), attempt("127.0.0.2", "alertmanager", "guess"), 535, "5.7.8")
	}
	// Locked: the address, whatever the name, and the name, whatever the address.
	wantReply(t, "right password from the locked address", attempt("127.0.0.2", "alertmanager", alertsPassword), 454, "4.7.0")
	wantReply(t, "another producer from the locked address", attempt("127.0.0.2", "ghost", otherPassword), 454, "4.7.0")
	wantReply(t, "the locked name from another address", attempt("127.0.0.3", "alertmanager", alertsPassword), 454, "4.7.0")
	if err := attempt("127.0.0.3", "ghost", otherPassword); err != nil {
		t.Fatalf("an unrelated producer from an unrelated address is refused: %v", err)
	}
	f.clock.Advance(2 * time.Second) // the first lock is one second
	if err := attempt("127.0.0.2", "alertmanager", alertsPassword); err != nil {
		t.Fatalf("after the lockout the right password is refused: %v", err)
	}
	// The success cleared the counts: one more failure does not lock.
	wantReply(t, "a failure after success", attempt("127.0.0.2", "alertmanager", "guess"), 535, "5.7.8")
	if err := attempt("127.0.0.2", "alertmanager", alertsPassword); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownNameCostsAHash: an unknown producer name costs an argon2id
// hash as a known name with a wrong password does, so the time AUTH takes
// to fail does not tell a guesser which names exist. The hashes are
// counted, not timed: a timed comparison is at the mercy of the machine.
func TestUnknownNameCostsAHash(t *testing.T) {
	f := startFrontDoor(t, nil)
	for i, name := range []string{"nobody", "alertmanager", "nobody-2", "alertmanager"} {
		before := f.srv.PasswordHashes()
		c := f.dial(fmt.Sprintf("127.0.1.%d", i))
		wantReply(t, "AUTH as "+name, c.Auth(sasl.NewPlainClient("", name, "guess")), 535, "5.7.8")
		if n := f.srv.PasswordHashes() - before; n != 1 {
			t.Fatalf("AUTH as %s with a wrong password ran %d argon2id checks, want 1", name, n)
		}
		f.clock.Advance(time.Hour) // the failures forgotten: no lockout between attempts
	}
}

// TestStartFailsOnATakenPort: a listener whose port is taken stops Start
// with an error naming it, and the listener already opened is closed.
// Start used to hang there, in Close, for ever: go-smtp had not yet
// registered the first listener, so closing the server left it open.
func TestStartFailsOnATakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	f := startFrontDoor(t, nil)
	tlsConf, _, err := ingress.LoopbackTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingress.Config{Listen: freeAddr, ListenTLS: taken.Addr().String(), TLS: tlsConf}
	for i := range 20 { // the hang depended on goroutine scheduling
		deps := ingress.Deps{JS: f.env.JS, Accounts: f.accounts, Producers: f.prods, Registry: prometheus.NewRegistry(), Log: zerolog.Nop()}
		done := make(chan error, 1)
		go func() {
			srv, err := ingress.Start(f.ctx, cfg, deps)
			if err == nil {
				srv.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("start %d with the implicit TLS port taken: %v", i, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("start %d with the implicit TLS port taken did not return", i)
		}
		ln, err := net.Listen("tcp", freeAddr)
		if err != nil {
			t.Fatalf("start %d: the STARTTLS listener was left open: %v", i, err)
		}
		ln.Close()
	}
}

func TestConnectionLimits(t *testing.T) {
	f := startFrontDoor(t, func(c *ingress.Config) { c.MaxConnsPerIP = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", f.addr())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "220 ") {
			t.Fatalf("greeting %q %v", buf[:n], err)
		}
	}
	third, err := net.Dial("tcp", f.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	buf := make([]byte, 128)
	n, _ := third.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "421 4.7.0 too many connections from your address") {
		t.Fatalf("third connection got %q", buf[:n])
	}
	// The limits are the front door's, not each listener's: the implicit
	// TLS listener refuses the address too, inside TLS (RFC 8314 §3.3),
	// where its client reads every reply.
	viaTLS, err := tls.Dial("tcp", f.tlsAddr(), f.tlsConfig())
	if err != nil {
		t.Fatalf("the implicit TLS listener, over the limit: %v (a refusal must still speak TLS)", err)
	}
	defer viaTLS.Close()
	_ = viaTLS.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := viaTLS.Read(buf); !strings.HasPrefix(string(buf[:n]), "421 4.7.0 too many connections from your address") {
		t.Fatalf("a third connection, to the implicit TLS listener, got %q: the limit counted each listener apart", buf[:n])
	}
	// Another address still gets in; a freed slot is usable again.
	f.dial("127.0.0.4")
	held[0].Close()
	rtestutil.Eventually(t, f.ctx, "a freed slot", func() bool {
		c, err := net.Dial("tcp", f.addr())
		if err != nil {
			return false
		}
		defer c.Close()
		n, _ := c.Read(buf)
		return strings.HasPrefix(string(buf[:n]), "220 ")
	})
}

func TestRemovedProducerCannotLogIn(t *testing.T) {
	f := startFrontDoor(t, nil)
	f.login("alertmanager", alertsPassword)
	if err := f.prods.Remove(f.ctx, "alertmanager"); err != nil {
		t.Fatal(err)
	}
	rtestutil.Eventually(t, f.ctx, "the removal seen", func() bool {
		err := f.dial("127.0.0.5").Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword))
		return err != nil
	})
}

// Removing a producer, or giving it a new password (relay producer add
// again), is how an operator shuts out a leaked password. A session that
// authenticated before must not keep sending on the old credentials for as
// long as its client keeps the connection open.
func TestRevokedProducerSessionCannotSend(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(f *frontDoor) error
	}{
		{"removed", func(f *frontDoor) error { return f.prods.Remove(f.ctx, "alertmanager") }},
		{"new password", func(f *frontDoor) error {
			_, err := f.prods.Put(f.ctx, "alertmanager", []string{"alerts", "strict"}, "a brand new password")
			return err
		}},
		{"fewer accounts", func(f *frontDoor) error {
			_, err := f.prods.Put(f.ctx, "alertmanager", []string{"strict"}, alertsPassword)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFrontDoor(t, nil)
			c := f.login("alertmanager", alertsPassword)
			if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
				t.Fatalf("before the change: %v", err)
			}
			// A transaction opened before the change, finished after it.
			open := f.login("alertmanager", alertsPassword)
			if err := open.Mail("alerts@contoso.com", nil); err != nil {
				t.Fatal(err)
			}
			if err := open.Rcpt("ops@contoso.com", nil); err != nil {
				t.Fatal(err)
			}
			before := f.srv.ProducerHash("alertmanager")
			if err := tc.revoke(f); err != nil {
				t.Fatal(err)
			}
			rtestutil.Eventually(t, f.ctx, "the change seen by the front door", func() bool {
				return f.srv.ProducerHash("alertmanager") != before
			})
			err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, alertmanagerMail)
			wantReply(t, "MAIL on a session authenticated before the change", err, 454, "4.7.0")
			w, err := open.Data()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte(alertmanagerMail)); err != nil {
				t.Fatal(err)
			}
			wantReply(t, "DATA of a transaction opened before the change", w.Close(), 454, "4.7.0")
			if n := len(f.queued()); n != 1 {
				t.Fatalf("%d messages queued, want only the one sent before the change", n)
			}
		})
	}
}

// A producer added a moment ago may not be in the front door's copy of the
// registry yet: AUTH then reads the bucket, and so must the check that the
// session's producer is still registered, or the new producer's first mail
// is refused.
func TestProducerNotYetSeenByTheWatchSends(t *testing.T) {
	f := startFrontDoor(t, nil)
	// Once the watch has delivered a change made after the start, it has
	// replayed the bucket's records too: nothing puts alertmanager back.
	if _, err := f.prods.Put(f.ctx, "sentinel", []string{"alerts"}, otherPassword); err != nil {
		t.Fatal(err)
	}
	rtestutil.Eventually(t, f.ctx, "the watch caught up", func() bool { return f.srv.ProducerHash("sentinel") != "" })
	f.srv.ForgetProducer("alertmanager")
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatalf("first mail of a producer the watch has not seen: %v", err)
	}
}
