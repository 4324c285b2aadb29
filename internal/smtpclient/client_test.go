package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/pki"
)

// The tests talk to a scripted server over real TCP and TLS: each test
// writes the server's side of the dialogue, so it can check what arrives
// and when (before or after a reply), which go-smtp's server hides.

// peer is the server's end of one connection.
type peer struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	tls  *tls.Config
}

func (p *peer) send(lines ...string) {
	p.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(p.conn, l+"\r\n"); err != nil {
			p.t.Errorf("server write %q: %v", l, err)
		}
	}
}

// line reads one command line; "" with an error at EOF or timeout.
func (p *peer) line() (string, error) {
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	s, err := p.r.ReadString('\n')
	return strings.TrimSuffix(s, "\r\n"), err
}

func (p *peer) expect(prefix string) string {
	p.t.Helper()
	l, err := p.line()
	if err != nil || !strings.HasPrefix(l, prefix) {
		p.t.Errorf("server: want %q, got %q (%v)", prefix, l, err)
	}
	return l
}

// skip reads n command lines, whatever they are (a pipelined group).
func (p *peer) skip(n int) {
	p.t.Helper()
	for range n {
		p.expect("")
	}
}

// rest reads command lines until the client closes (or goes silent) and
// returns them: what a client sent that it should not have.
func (p *peer) rest() []string {
	var lines []string
	for {
		l, err := p.line()
		if err != nil {
			return lines
		}
		lines = append(lines, l)
	}
}

// handshake plays greeting, EHLO, STARTTLS and EHLO with ext offered in
// TLS. It returns false when the client gave up.
func (p *peer) handshake(ext ...string) bool {
	p.t.Helper()
	p.send("220 fake.test ESMTP")
	p.expect("EHLO ")
	p.send("250-fake.test Hello", "250-SIZE 1000000", "250 STARTTLS")
	p.expect("STARTTLS")
	p.send("220 2.0.0 SMTP server ready")
	tc := tls.Server(p.conn, p.tls)
	if err := tc.Handshake(); err != nil {
		p.t.Errorf("server TLS handshake: %v", err)
		return false
	}
	p.conn, p.r = tc, bufio.NewReader(tc)
	p.expect("EHLO ")
	lines := []string{"250-fake.test Hello"}
	for _, e := range ext {
		lines = append(lines, "250-"+e)
	}
	lines = append(lines, "250 SIZE 1000000")
	p.send(lines...)
	return true
}

// handshakePipelining is handshake with PIPELINING offered or not.
func (p *peer) handshakePipelining(on bool) bool {
	p.t.Helper()
	if on {
		return p.handshake("PIPELINING")
	}
	return p.handshake()
}

// content reads the message content up to the lone dot.
func (p *peer) content() (string, error) {
	var b strings.Builder
	for {
		l, err := p.line()
		if err != nil {
			return b.String(), err
		}
		if l == "." {
			return b.String(), nil
		}
		b.WriteString(l + "\n")
	}
}

// serve starts a server running script on its first connection and
// returns a connected client for it (nil if StartTLS failed, with the
// error) and a wait for the script to end.
func serve(t testing.TB, cfg Config, script func(p *peer)) (*Client, error, func()) {
	t.Helper()
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server("fake.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.Close()
		script(&peer{t: t, conn: conn, r: bufio.NewReader(conn), tls: &tls.Config{Certificates: []tls.Certificate{cert}}})
	}()
	wait := func() {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("the server script did not end")
		}
	}
	t.Cleanup(func() { ln.Close() })
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS == nil {
		cfg.TLS = &tls.Config{ServerName: "fake.test", RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	}
	c, err := StartTLS(context.Background(), conn, cfg)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err, wait
}

const body = "Subject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"

// BenchmarkSendContent: pipelined transactions of a 2 KB message on one
// session over TLS to a scripted server, as a lane sends them; with
// -benchmem it shows what one message allocates.
//
//	go test -run '^$' -bench SendContent -benchmem ./internal/smtpclient
func BenchmarkSendContent(b *testing.B) {
	msg := []byte("Subject: load\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcde\r\n", 64))
	c, err, wait := serve(b, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING", "8BITMIME") {
			return
		}
		for {
			l, err := p.line()
			if err != nil || l == "QUIT" {
				p.send("221 2.0.0 Bye")
				return
			}
			p.skip(2) // RCPT, DATA
			p.send("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 Go ahead")
			if _, err := p.content(); err != nil {
				return
			}
			p.send("250 2.0.0 OK")
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() { // Loop starts the timer at its first call and stops it at its end
		if err := c.SendContent(ctx, "a@fake.test", []string{"b@fake.test"}, Bytes(msg)); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Quit(ctx); err != nil {
		b.Fatal(err)
	}
	wait()
}

func TestPipelinedTransactionIsOneGroup(t *testing.T) {
	var group []string
	var got string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING", "8BITMIME") {
			return
		}
		// No reply until DATA has arrived: a client that waits for the
		// reply to MAIL never sends the rest, and the read times out.
		for len(group) == 0 || group[len(group)-1] != "DATA" {
			l, err := p.line()
			if err != nil {
				p.t.Errorf("server read the group %q, then: %v (the client waited for a reply)", group, err)
				return
			}
			group = append(group, l)
		}
		p.send("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK", "354 Start mail input; end with <CRLF>.<CRLF>")
		got, _ = p.content()
		p.send("250 2.0.0 OK <id@fake.test> [Hostname=fake]")
		p.expect("QUIT")
		p.send("221 2.0.0 Service closing transmission channel")
	})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Pipelining() {
		t.Fatal("PIPELINING offered but not seen")
	}
	if err := c.Send(context.Background(), "a@fake.test", []string{"b@fake.test", "c@fake.test"}, []byte(body)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Quit(context.Background()); err != nil {
		t.Fatalf("quit: %v", err)
	}
	wait()
	want := []string{"MAIL FROM:<a@fake.test> SIZE=45", "RCPT TO:<b@fake.test>", "RCPT TO:<c@fake.test>", "DATA"}
	if strings.Join(group, "|") != strings.Join(want, "|") {
		t.Errorf("group = %q, want %q", group, want)
	}
	// RFC 5321 §4.5.2: a line starting with a dot gets one more.
	if wantBody := "Subject: hi\n\nline one\n..starts with a dot\n"; got != wantBody {
		t.Errorf("content = %q, want %q", got, wantBody)
	}
}

func TestLockstepWithoutPipelining(t *testing.T) {
	var early []string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake() {
			return
		}
		for _, reply := range []string{"250 2.1.0 OK", "250 2.1.5 OK", "354 go ahead"} {
			l := p.expect("")
			if p.r.Buffered() > 0 {
				early = append(early, l)
			}
			p.send(reply)
		}
		p.content()
		p.send("250 2.0.0 OK")
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Pipelining() {
		t.Fatal("PIPELINING not offered but used")
	}
	if err := c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body)); err != nil {
		t.Fatalf("send: %v", err)
	}
	wait()
	if len(early) > 0 {
		t.Errorf("commands sent before the previous reply came, after %q", early)
	}
}

// Any positive completion reply accepts a recipient (RFC 5321 §4.2.1):
// 251 "user not local; will forward" (§4.1.1.3) and 252 as well as 250,
// with and without pipelining. Other codes are refusals.
func TestRecipientAcceptedByAnyPositiveReply(t *testing.T) {
	for _, tt := range []struct {
		reply string
		ok    bool
	}{
		{"250 2.1.5 Recipient OK", true},
		{"251 2.1.5 User not local; will forward", true},
		{"252 2.1.5 Cannot verify, will attempt delivery", true},
		{"450 4.2.1 Try later", false},
		{"550 5.1.1 No such user", false},
	} {
		for _, pipelining := range []bool{true, false} {
			t.Run(fmt.Sprintf("%.3s pipelining=%v", tt.reply, pipelining), func(t *testing.T) {
				var got string
				c, err, wait := serve(t, Config{}, func(p *peer) {
					if !p.handshakePipelining(pipelining) {
						return
					}
					p.expect("MAIL FROM:")
					if !pipelining {
						p.send("250 2.1.0 Sender OK")
					}
					p.expect("RCPT TO:")
					if !pipelining {
						p.send(tt.reply)
						if !tt.ok {
							return
						}
					}
					p.expect("DATA")
					if pipelining {
						p.send("250 2.1.0 Sender OK", tt.reply)
					}
					p.send("354 Go ahead")
					if !tt.ok {
						p.rest()
						return
					}
					got, _ = p.content()
					p.send("250 2.0.0 OK")
				})
				if err != nil {
					t.Fatal(err)
				}
				err = c.Send(context.Background(), "a@fake.test", []string{"b@elsewhere.test"}, []byte(body))
				wait()
				if tt.ok && (err != nil || got == "") {
					t.Fatalf("RCPT answered %q: %v (content %q), want the message sent", tt.reply, err, got)
				}
				if !tt.ok && err == nil {
					t.Fatalf("RCPT answered %q: sent, want a refusal", tt.reply)
				}
			})
		}
	}
}

func TestRefusedRecipientSendsNoContent(t *testing.T) {
	var after []string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING") {
			return
		}
		p.skip(4)
		// A server that accepts DATA although a recipient was refused
		// (RFC 2920 §3.1 tells clients to expect it).
		p.send("250 2.1.0 OK", "250 2.1.5 OK", "550 5.1.1 User unknown", "354 go ahead")
		after = p.rest() // the client closed: the transaction is void
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test", "nobody@fake.test"}, []byte(body))
	var e *Error
	if !errors.As(err, &e) || e.Command != "RCPT" || e.Reply() == nil || e.Reply().Code != 550 || e.Reply().EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("err = %v, want the RCPT's 550 5.1.1", err)
	}
	wait()
	if len(after) > 0 {
		t.Errorf("content sent after a refused recipient: %q", after)
	}
	if !c.Broken() {
		t.Error("the abandoned transaction's connection is not marked broken")
	}
}

func TestLateRepliesAfterARefusalBreakTheConnection(t *testing.T) {
	// MAIL and the first RCPT are answered at once, the rest only after
	// the client gave up. Reading those late replies as the next
	// transaction's would deliver its content to this one's recipients.
	// The timeout also bounds the greeting, EHLOs and TLS handshake:
	// short enough for the test, long enough for -race on busy cores.
	var after []string
	c, err, wait := serve(t, Config{CommandTimeout: 2 * time.Second}, func(p *peer) {
		if !p.handshake("PIPELINING") {
			return
		}
		p.skip(4)
		p.send("250 2.1.0 OK", "550 5.1.1 User unknown")
		after = p.rest()
		io.WriteString(p.conn, "250 2.1.5 OK\r\n354 go ahead\r\n") // too late: the client closed
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Send(context.Background(), "a@fake.test", []string{"nobody@fake.test", "b@fake.test"}, []byte(body))
	var e *Error
	if !errors.As(err, &e) || e.Command != "RCPT" || e.Reply() == nil || e.Reply().Code != 550 {
		t.Fatalf("err = %v, want the RCPT's 550", err)
	}
	if !c.Broken() {
		t.Fatal("replies still owed, yet the connection is not broken")
	}
	if err := c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body)); err == nil {
		t.Fatal("a broken connection sent another message")
	}
	wait()
	if len(after) > 0 {
		t.Errorf("sent on a connection out of step: %q", after)
	}
}

func TestRefusedRSETBreaksTheConnection(t *testing.T) {
	var after []string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING") {
			return
		}
		p.skip(3)
		p.send("451 4.3.0 try later", "503 5.5.1 Need MAIL", "503 5.5.1 No recipients")
		p.skip(4)
		p.send("500 5.5.1 RSET refused", "250 2.1.0 OK", "250 2.1.5 OK", "354 go ahead")
		after = p.rest()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body)); err == nil {
		t.Fatal("the first transaction should be refused")
	}
	err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body))
	var e *Error
	if !errors.As(err, &e) || e.Command != "RSET" || !c.Broken() {
		t.Fatalf("err = %v, broken %v; want the RSET refusal and a broken connection", err, c.Broken())
	}
	wait()
	if len(after) > 0 {
		t.Errorf("content sent after a refused RSET: %q", after)
	}
}

func TestRefusedMailThenRSETOpensTheNextGroup(t *testing.T) {
	var second []string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING") {
			return
		}
		p.skip(3)
		p.send("451 4.3.0 Temporary server error", "503 5.5.1 Need MAIL first", "503 5.5.1 No valid recipients")
		for len(second) == 0 || second[len(second)-1] != "DATA" {
			l, err := p.line()
			if err != nil {
				p.t.Errorf("second group: %v", err)
				return
			}
			second = append(second, l)
		}
		p.send("250 2.0.0 Reset", "250 2.1.0 OK", "250 2.1.5 OK", "354 go ahead")
		p.content()
		p.send("250 2.0.0 OK")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body))
	var e *Error
	if !errors.As(err, &e) || e.Command != "MAIL" || e.Reply() == nil || e.Reply().Code != 451 || e.Reply().Message != "Temporary server error" {
		t.Fatalf("err = %v, want MAIL's 451", err)
	}
	if err := c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body)); err != nil {
		t.Fatalf("second send: %v", err)
	}
	wait()
	if len(second) == 0 || second[0] != "RSET" {
		t.Errorf("second group = %q, want RSET first", second)
	}
}

func TestNoSTARTTLSNoAuth(t *testing.T) {
	var after []string
	_, err, wait := serve(t, Config{}, func(p *peer) {
		p.send("220 fake.test ESMTP")
		p.expect("EHLO ")
		p.send("250-fake.test Hello", "250-AUTH XOAUTH2 PLAIN", "250 PIPELINING")
		after = p.rest()
	})
	if !errors.Is(err, ErrNoStartTLS) {
		t.Fatalf("err = %v, want ErrNoStartTLS", err)
	}
	wait()
	if len(after) > 0 {
		t.Errorf("sent to a server without STARTTLS: %q", after)
	}
}

func TestUntrustedCertificateFailsBeforeAuth(t *testing.T) {
	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	_, err, wait := serve(t, Config{TLS: &tls.Config{ServerName: "fake.test", RootCAs: other.Pool}}, func(p *peer) {
		p.send("220 fake.test ESMTP")
		p.expect("EHLO ")
		p.send("250-fake.test Hello", "250 STARTTLS")
		p.expect("STARTTLS")
		p.send("220 2.0.0 ready")
		tls.Server(p.conn, p.tls).Handshake() // fails: the client refuses
	})
	var cv *tls.CertificateVerificationError
	if !errors.As(err, &cv) {
		t.Fatalf("err = %v, want a certificate verification error", err)
	}
	wait()
}

// challenger is a SASL client whose server answers with a challenge.
type challenger struct{ next [][]byte }

func (c *challenger) Start() (string, []byte, error) { return "XOAUTH2", []byte("user=a\x01\x01"), nil }
func (c *challenger) Next(ch []byte) ([]byte, error) {
	c.next = append(c.next, ch)
	return []byte{}, nil
}

// canceller cannot answer challenges.
type canceller struct{}

func (canceller) Start() (string, []byte, error) { return "XOAUTH2", []byte("user=a\x01\x01"), nil }
func (canceller) Next([]byte) ([]byte, error)    { return nil, errors.New("no answer") }

func TestAuthCancelledThenServerGoesOn(t *testing.T) {
	var cancel string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("AUTH XOAUTH2") {
			return
		}
		p.expect("AUTH XOAUTH2 ")
		p.send("334 e30=")
		cancel, _ = p.line()
		p.send("334 e30=") // should have been a 501
		p.line()
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Auth(context.Background(), canceller{})
	if err == nil || !c.Broken() {
		t.Fatalf("err = %v, broken %v; want an error and a broken connection", err, c.Broken())
	}
	wait()
	if cancel != "*" {
		t.Errorf("client answered the challenge with %q, want the cancel *", cancel)
	}
}

func TestAuthChallengeThenRefusal(t *testing.T) {
	var lines []string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("AUTH XOAUTH2") {
			return
		}
		lines = append(lines, p.expect("AUTH XOAUTH2 "))
		p.send("334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"401"}`)))
		l, _ := p.line()
		lines = append(lines, l)
		p.send("535 5.7.3 Authentication unsuccessful")
	})
	if err != nil {
		t.Fatal(err)
	}
	sc := &challenger{}
	err = c.Auth(context.Background(), sc)
	var e *Error
	if !errors.As(err, &e) || e.Command != "AUTH" || e.Reply() == nil || e.Reply().Code != 535 || e.Reply().EnhancedCode != (smtp.EnhancedCode{5, 7, 3}) {
		t.Fatalf("err = %v, want AUTH's 535 5.7.3", err)
	}
	wait()
	if want := "AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user=a\x01\x01")); len(lines) != 2 || lines[0] != want || lines[1] != "" {
		t.Errorf("client lines = %q, want the initial response, then an empty line", lines)
	}
	if len(sc.next) != 1 || string(sc.next[0]) != `{"status":"401"}` {
		t.Errorf("challenges = %q", sc.next)
	}
}

func TestNotSendableLocally(t *testing.T) {
	tests := []struct {
		name  string
		ext   []string
		from  string
		rcpts []string
		data  string
		mail  string // the MAIL line when sendable
	}{
		{"non-ASCII address without SMTPUTF8", []string{"PIPELINING"}, "jörg@fake.test", []string{"b@fake.test"}, body, ""},
		{"non-ASCII address with SMTPUTF8", []string{"PIPELINING", "SMTPUTF8"}, "jörg@fake.test", []string{"b@fake.test"}, body, "MAIL FROM:<jörg@fake.test> SIZE=45 SMTPUTF8"},
		{"8-bit content without 8BITMIME", []string{"PIPELINING"}, "a@fake.test", []string{"b@fake.test"}, "Subject: é\r\n\r\n", ""},
		{"8-bit content with 8BITMIME", []string{"PIPELINING", "8BITMIME"}, "a@fake.test", []string{"b@fake.test"}, "Subject: é\r\n\r\n", "MAIL FROM:<a@fake.test> SIZE=15 BODY=8BITMIME"},
		{"line break in an address", []string{"PIPELINING"}, "a@fake.test", []string{"b@fake.test>\r\nDATA"}, body, ""},
		{"no recipient", []string{"PIPELINING"}, "a@fake.test", nil, body, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshake(tt.ext...) {
					return
				}
				l, err := p.line()
				if err != nil {
					return // nothing sent, the client closed
				}
				got = l
				for range len(tt.rcpts) + 1 {
					p.expect("")
				}
				p.send("250 OK")
				for range tt.rcpts {
					p.send("250 OK")
				}
				p.send("354 go ahead")
				p.content()
				p.send("250 OK")
			})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Send(context.Background(), tt.from, tt.rcpts, []byte(tt.data))
			c.Close()
			wait()
			if tt.mail == "" {
				if !errors.Is(err, ErrNotSendable) || got != "" || c.Broken() {
					t.Errorf("err = %v, server got %q; want ErrNotSendable and nothing sent", err, got)
				}
				return
			}
			if err != nil || got != tt.mail {
				t.Errorf("err = %v, MAIL = %q; want %q", err, got, tt.mail)
			}
		})
	}
}

func TestServerSilence(t *testing.T) {
	t.Run("command timeout", func(t *testing.T) {
		// The timeout also bounds the dial's greeting, EHLOs and TLS
		// handshake: long enough for -race on busy cores.
		c, err, wait := serve(t, Config{CommandTimeout: 2 * time.Second}, func(p *peer) {
			if p.handshake("PIPELINING") {
				p.line() // MAIL, never answered; then EOF when the client gives up
				p.rest()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body))
		var ne net.Error
		var e *Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &e) || e.Command != "MAIL" || e.Reply() != nil {
			t.Fatalf("err = %v, want a timeout at MAIL without a reply", err)
		}
		c.Close()
		wait()
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c, err, wait := serve(t, Config{}, func(p *peer) {
			if p.handshake("PIPELINING") {
				p.line()
				cancel() // instead of a reply
				p.rest()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Send(ctx, "a@fake.test", []string{"b@fake.test"}, []byte(body))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		wait()
	})
}

func TestConnectionLostBeforeRepliesIsNoReply(t *testing.T) {
	// An idle connection the server gave up on: it says 421 and closes
	// while the client's group is on its way.
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if p.handshake("PIPELINING") {
			p.send("421 4.4.2 fake.test Connection dropped due to timeout")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	wait()
	err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test"}, []byte(body))
	var e *Error
	if !errors.As(err, &e) || e.Command == "message" {
		t.Fatalf("err = %v, want a failure before the content", err)
	}
	if r := e.Reply(); r != nil && r.Code != 421 {
		t.Fatalf("reply = %v, want 421 or none", r)
	}
}

func ExampleParseReply() {
	e := ParseReply(535, "5.7.3 Authentication unsuccessful [SN4PR0601CA0003.namprd06.prod.outlook.com]")
	fmt.Println(e.Code, e.EnhancedCode, e.Message)
	// Output: 535 [5 7 3] Authentication unsuccessful [SN4PR0601CA0003.namprd06.prod.outlook.com]
}

// longToken is an initial response the size an Office 365 access token
// makes (2-3 KB of XOAUTH2 response).
type longToken struct{ ir []byte }

func (l longToken) Start() (string, []byte, error) { return "XOAUTH2", l.ir, nil }
func (longToken) Next([]byte) ([]byte, error)      { return []byte{}, nil }

// TestAuthLongInitialResponseTwoStep (RFC 4954 §4): an initial response
// that would make the AUTH line longer than 512 octets (RFC 5321
// §4.5.3.1.4) is not put on it: "AUTH XOAUTH2" alone, then the response
// after the server's empty 334. One that fits stays on the line (one round
// trip), up to exactly 512 octets with CRLF.
func TestAuthLongInitialResponseTwoStep(t *testing.T) {
	// "AUTH XOAUTH2 " is 13 octets: 372 bytes encode to 496 characters, a
	// line of 509 + CRLF = 511; 375 bytes to 500, 513 + CRLF.
	for _, tc := range []struct {
		name    string
		irLen   int // bytes before base64
		oneLine bool
	}{
		{"short", 30, true},
		{"the longest that fits", 372, true},
		{"one base64 quantum over", 375, false},
		{"an Office 365 sized token", 2400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ir := []byte(strings.Repeat("a", tc.irLen))
			encoded := base64.StdEncoding.EncodeToString(ir)
			fits := tc.oneLine
			var lines []string
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshake("AUTH XOAUTH2") {
					return
				}
				l, _ := p.line()
				lines = append(lines, l)
				if len(l)+2 > 512 {
					p.send("500 5.5.2 Line too long") // what a server that keeps the limit says
					return
				}
				if l == "AUTH XOAUTH2" {
					p.send("334 ")
					l, _ = p.line()
					lines = append(lines, l)
				}
				p.send("235 2.7.0 Authentication successful")
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Auth(context.Background(), longToken{ir}); err != nil {
				t.Fatalf("AUTH: %v (lines %q)", err, lines)
			}
			wait()
			switch {
			case fits && (len(lines) != 1 || lines[0] != "AUTH XOAUTH2 "+encoded):
				t.Errorf("a response that fits: lines %q, want it on the AUTH line", lines)
			case !fits && (len(lines) != 2 || lines[0] != "AUTH XOAUTH2" || lines[1] != encoded):
				t.Errorf("a long response: lines %q, want AUTH XOAUTH2, then the response after 334", lines)
			}
		})
	}
}

// A refused RCPT says how many of the transaction's recipients the server
// accepted before it: with a recipient limit (RFC 5321 §4.5.3.1.10) that
// is the limit, and the relay splits the rest by it.
func TestRefusedRecipientCountsThoseAcceptedBefore(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprint("pipelining=", pipelining), func(t *testing.T) {
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshakePipelining(pipelining) {
					return
				}
				replies := []string{"250 2.1.0 OK", "250 2.1.5 OK", "250 2.1.5 OK", "452 4.5.3 Too many recipients", "452 4.5.3 Too many recipients", "354 go ahead"}
				if pipelining {
					p.skip(6)
					p.send(replies...)
					p.rest()
					return
				}
				for _, r := range replies[:4] {
					p.expect("")
					p.send(r)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Send(context.Background(), "a@fake.test", []string{"b@fake.test", "c@fake.test", "d@fake.test", "e@fake.test"}, []byte(body))
			wait()
			var e *Error
			if !errors.As(err, &e) || e.Command != "RCPT" || e.Reply() == nil || e.Reply().Code != 452 || e.Accepted != 2 {
				t.Fatalf("err = %v (%+v), want the third RCPT's 452 with 2 accepted before it", err, e)
			}
		})
	}
}

// TestParseReplyEnhancedCodeOnAnyLine: RFC 2034 §4 puts the enhanced code
// on every line of a multiline reply; go-smtp's server writes it on the
// last line only. Either way the reply has it.
func TestParseReplyEnhancedCodeOnAnyLine(t *testing.T) {
	for _, c := range []struct {
		text, msg string
		ec        smtp.EnhancedCode
	}{
		{"5.2.0 quota\n5.2.0 diagnostic", "quota\ndiagnostic", smtp.EnhancedCode{5, 2, 0}},
		{"quota\n5.2.0 diagnostic", "quota\ndiagnostic", smtp.EnhancedCode{5, 2, 0}},
		{"first\nsecond", "first\nsecond", smtp.EnhancedCode{}},
		{"4.2.0 first\nsecond", "first\nsecond", smtp.EnhancedCode{4, 2, 0}}, // another class digit: kept as written
	} {
		e := ParseReply(554, c.text)
		if e.EnhancedCode != c.ec || (c.ec != smtp.EnhancedCode{} && e.Message != c.msg) {
			t.Errorf("ParseReply(554, %q) = %v %q, want %v %q", c.text, e.EnhancedCode, e.Message, c.ec, c.msg)
		}
	}
}

// SendSome: a recipient refused with a reply the caller skips does not
// void the transaction; the content goes to the recipients accepted (RFC
// 5321 §3.3) and the refused one is returned with its reply. With every
// recipient refused no content leaves and the first refusal is the error.
func TestSendSomeGoesToTheAcceptedRecipients(t *testing.T) {
	skip := func(r *smtp.SMTPError) bool { return r.EnhancedCode == smtp.EnhancedCode{5, 1, 1} }
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			var got string
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshakePipelining(pipelining) {
					return
				}
				replies := []string{"250 2.1.0 Sender OK", "250 2.1.5 OK", "550 5.1.1 User unknown", "250 2.1.5 OK", "354 go ahead"}
				if pipelining {
					p.skip(5)
					p.send(replies...)
				} else {
					for _, r := range replies {
						p.skip(1)
						p.send(r)
					}
				}
				got, _ = p.content()
				p.send("250 2.0.0 OK")
			})
			if err != nil {
				t.Fatal(err)
			}
			refused, err := c.SendSome(context.Background(), "a@fake.test", []string{"b@fake.test", "nobody@fake.test", "c@fake.test"}, Bytes([]byte(body)), skip)
			wait()
			if err != nil || got == "" {
				t.Fatalf("err %v, content %q: want the message sent to the two accepted", err, got)
			}
			if len(refused) != 1 || refused[0].Rcpt != "nobody@fake.test" || refused[0].Reply.Code != 550 {
				t.Fatalf("refused %+v, want nobody@fake.test with its 550", refused)
			}
			if c.Broken() {
				t.Error("connection broken after a partly accepted transaction")
			}
		})
		t.Run(fmt.Sprintf("all refused pipelining=%v", pipelining), func(t *testing.T) {
			var after []string
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshakePipelining(pipelining) {
					return
				}
				if pipelining {
					p.skip(3)
					p.send("250 2.1.0 Sender OK", "550 5.1.1 User unknown", "554 5.5.1 No valid recipients")
				} else {
					p.skip(1)
					p.send("250 2.1.0 Sender OK")
					p.skip(1)
					p.send("550 5.1.1 User unknown")
				}
				after = p.rest()
			})
			if err != nil {
				t.Fatal(err)
			}
			refused, err := c.SendSome(context.Background(), "a@fake.test", []string{"nobody@fake.test"}, Bytes([]byte(body)), skip)
			var e *Error
			if !errors.As(err, &e) || e.Command != "RCPT" || e.Reply() == nil || e.Reply().Code != 550 || refused != nil {
				t.Fatalf("err = %v, refused %v: want the RCPT's 550 5.1.1", err, refused)
			}
			c.Close()
			wait()
			for _, l := range after {
				if l == "DATA" || strings.HasPrefix(l, "Subject") {
					t.Errorf("sent %q after every recipient was refused", l)
				}
			}
		})
	}
}
