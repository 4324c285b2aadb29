package submit_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"relay365/internal/pki"
	"relay365/internal/submit"
)

// recordingSMTP is a hand-written SMTP server that records every command
// line it receives (in plaintext or, after STARTTLS, decrypted). It
// advertises AUTH PLAIN LOGIN XOAUTH2 to tempt a client.
type recordingSMTP struct {
	ln       net.Listener
	starttls *tls.Config // nil: STARTTLS not offered
	// answer replies to every line but EHLO, HELO, STARTTLS and QUIT;
	// nil answers 250 to anything, AUTH included.
	answer func(line string, write func(string))
	// handshake, when set, takes the connection after the 220 to
	// STARTTLS in place of a crypto/tls server (a server speaking TLS
	// wrongly, or not at all), and the session ends when it returns.
	handshake func(conn net.Conn)
	mu        sync.Mutex
	lines     []string
	done      chan struct{}
}

func startRecordingSMTP(t *testing.T, starttls *tls.Config) *recordingSMTP {
	return startScriptedSMTP(t, starttls, nil)
}

// startScriptedSMTP is startRecordingSMTP with its replies to commands
// after the handshake written by answer.
func startScriptedSMTP(t *testing.T, starttls *tls.Config, answer func(line string, write func(string))) *recordingSMTP {
	t.Helper()
	return startSMTP(t, &recordingSMTP{starttls: starttls, answer: answer})
}

// startSMTP starts s (its fields but ln and done set) on a loopback port.
func startSMTP(t *testing.T, s *recordingSMTP) *recordingSMTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln, s.done = ln, make(chan struct{})
	go s.serve()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *recordingSMTP) serve() {
	defer close(s.done)
	conn, err := s.ln.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	var c net.Conn = conn
	r := bufio.NewReader(c)
	write := func(l string) { c.Write([]byte(l + "\r\n")) }
	write("220 recorder ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.lines = append(s.lines, line)
		s.mu.Unlock()
		switch cmd := strings.ToUpper(strings.Fields(line + " x")[0]); cmd {
		case "EHLO", "HELO":
			write("250-recorder")
			if s.starttls != nil || s.handshake != nil {
				write("250-STARTTLS")
			}
			write("250 AUTH PLAIN LOGIN XOAUTH2")
		case "STARTTLS":
			if s.handshake != nil {
				write("220 go ahead")
				s.handshake(conn)
				return
			}
			if s.starttls == nil {
				write("502 no")
				continue
			}
			write("220 go ahead")
			tc := tls.Server(conn, s.starttls)
			if err := tc.Handshake(); err != nil {
				return
			}
			c, r = tc, bufio.NewReader(tc)
		case "QUIT":
			write("221 bye")
			return
		default:
			if s.answer != nil {
				s.answer(line, write)
				continue
			}
			write("250 ok") // accept anything, AUTH included
		}
	}
}

func (s *recordingSMTP) received() []string {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// trustedTLS is a server TLS configuration with a certificate of a new CA,
// and that CA's file, for an Endpoint's CAFile.
func trustedTLS(t *testing.T) (*tls.Config, string) {
	t.Helper()
	ca, err := pki.NewCA("the account's private CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, caFile
}

// echoTestToken is a bearer token long enough that a quote of part of it
// shows.
var echoTestToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + strings.Repeat("c2VjcmV0", 300) + ".signature-part-of-the-token"

// dialEchoingAUTH dials, with token, a server that answers AUTH XOAUTH2
// with an empty challenge and the client's response line with
// refusal(line): a server quoting what it could not use.
func dialEchoingAUTH(t *testing.T, token string, refusal func(line string) string) (*submit.SMTPError, error) {
	t.Helper()
	tlsConf, caFile := trustedTLS(t)
	srv := startScriptedSMTP(t, tlsConf, func(line string, write func(string)) {
		if f := strings.Fields(line); len(f) == 2 && strings.EqualFold(f[0], "AUTH") {
			write("334 ")
			return
		}
		write(refusal(line))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := (&submit.Transport{}).Dial(ctx, submit.Endpoint{Addr: srv.ln.Addr().String(), CAFile: caFile}, "alerts@contoso.com", token)
	var se *submit.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("want an SMTP error, got %v", err)
	}
	return se, err
}

// keepsNone fails t when any of texts holds any of the secrets' quotes.
func keepsNone(t *testing.T, what string, texts []string, quotes ...string) {
	t.Helper()
	for _, text := range texts {
		for _, q := range quotes {
			if strings.Contains(text, q) {
				t.Fatalf("the error keeps the token%s: %.200s", what, text)
			}
		}
	}
}

// TestNoPlaintextAuthEver: a server that offers AUTH PLAIN, LOGIN and
// XOAUTH2 without STARTTLS, or STARTTLS with a certificate the relay does
// not trust, receives no AUTH command and not one byte of the token, and
// the error is a configuration error (the account pauses, nothing is
// retried in a loop).
func TestNoPlaintextAuthEver(t *testing.T) {
	ca, err := pki.NewCA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	const tokenValue = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.c2VjcmV0.plaintext-probe"
	for name, tc := range map[string]struct {
		starttls *tls.Config
		want     string
	}{
		"no STARTTLS":           {nil, "STARTTLS"},
		"untrusted certificate": {&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, "certificate"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := startRecordingSMTP(t, tc.starttls)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := (&submit.Transport{}).Send(ctx, submit.Endpoint{Addr: srv.ln.Addr().String()}, "alerts@contoso.com", tokenValue, rendered(t))
			var se *submit.SMTPError
			if !errors.As(err, &se) || se.Class != submit.ClassConfig || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a config error about %s, got %v", tc.want, err)
			}
			lines := srv.received()
			for _, l := range lines {
				if strings.HasPrefix(strings.ToUpper(l), "AUTH") || strings.Contains(l, "c2VjcmV0") || strings.HasPrefix(strings.ToUpper(l), "MAIL") {
					t.Fatalf("the server received %q; all lines: %q", l, lines)
				}
			}
			if len(lines) == 0 {
				t.Fatal("the recorder saw no EHLO; the test proves nothing")
			}
		})
	}
}

// TestNoAuthBelowTLS12: SECURITY.md promises TLS 1.2 or newer to Office
// 365. A server whose certificate the relay trusts (its CA as the
// account's ca_file) but that speaks only TLS 1.0 and 1.1 gets no AUTH
// command and no byte of the token; the same server offering TLS 1.2
// gets the AUTH (the control: the refusal is the version's, not the
// certificate's).
func TestNoAuthBelowTLS12(t *testing.T) {
	ca, err := pki.NewCA("the account's private CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const tokenValue = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.c2VjcmV0.tls11-probe"
	authed := func(lines []string) bool {
		for _, l := range lines {
			if strings.HasPrefix(strings.ToUpper(l), "AUTH") || strings.Contains(l, "c2VjcmV0") || strings.HasPrefix(strings.ToUpper(l), "MAIL") {
				return true
			}
		}
		return false
	}
	send := func(srv *recordingSMTP) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return (&submit.Transport{}).Send(ctx, submit.Endpoint{Addr: srv.ln.Addr().String(), CAFile: caFile}, "alerts@contoso.com", tokenValue, rendered(t))
	}

	old := startRecordingSMTP(t, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	err = send(old)
	var se *submit.SMTPError
	if !errors.As(err, &se) || se.Class != submit.ClassConfig || !strings.Contains(err.Error(), "version") {
		t.Errorf("a TLS 1.1 server: %v, want a configuration error about the protocol version", err)
	}
	// The failed handshake is a configuration error (the account pauses
	// and probes: TestTLSHandshakeFailureClasses); never sent below 1.2.
	if lines := old.received(); authed(lines) {
		t.Fatalf("a TLS 1.1 server received the AUTH or the token: %q", lines)
	} else if len(lines) == 0 {
		t.Fatal("the recorder saw no EHLO; the test proves nothing")
	}

	current := startRecordingSMTP(t, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	_ = send(current) // the recorder's replies are no real SMTP; only what it received matters
	if lines := current.received(); !authed(lines) {
		t.Fatalf("control: a TLS 1.2 server with the trusted certificate got no AUTH: %q", lines)
	}
}

// TestEchoedTokenIsNotKept: a server that quotes the client's AUTH
// response in its refusal (some answer an unexpected line with
// "unrecognized: <line>") must not put the bearer token, or the base64
// response that carries it, into the error: it goes to the logs, /status
// and dead letters.
func TestEchoedTokenIsNotKept(t *testing.T) {
	se, err := dialEchoingAUTH(t, echoTestToken, func(line string) string {
		return "535 5.7.3 Authentication unsuccessful, unrecognized response " + line
	})
	if se.Class != submit.ClassAuth {
		t.Fatalf("want an auth error, got %v", err)
	}
	resp := base64.StdEncoding.EncodeToString(submit.XOAUTH2Response("alerts@contoso.com", echoTestToken))
	keepsNone(t, "", []string{err.Error(), se.Text, se.Reply()}, resp[:40], "c2VjcmV0c2VjcmV0")
	if !strings.Contains(err.Error(), "535 5.7.3 Authentication unsuccessful") {
		t.Fatalf("the reply itself is lost: %v", err)
	}
}

// TestXOAUTH2SecondChallengeCancels: RFC 7628 §3.2.3 has the server send
// its error challenge once; the client answers it, and the server ends
// the exchange with a failure. A server that challenges again gets "*"
// (RFC 4954 §4), not empty answers until the command timeout.
func TestXOAUTH2SecondChallengeCancels(t *testing.T) {
	tlsConf, caFile := trustedTLS(t)
	challenge := base64.StdEncoding.EncodeToString([]byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"}`))
	inAuth := false
	srv := startScriptedSMTP(t, tlsConf, func(line string, write func(string)) {
		switch {
		case inAuth && line == "*":
			write("501 5.0.0 Negotiation cancelled")
			inAuth = false
		case inAuth:
			write("334 " + challenge) // again, and again
		case strings.HasPrefix(strings.ToUpper(line), "AUTH"):
			inAuth = true
			write("334 ")
		default:
			write("500 5.5.1 what")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := (&submit.Transport{CommandTimeout: time.Hour}).Dial(ctx, submit.Endpoint{Addr: srv.ln.Addr().String(), CAFile: caFile}, "alerts@contoso.com", "a-token")
	var se *submit.SMTPError
	if !errors.As(err, &se) || se.Code != 501 {
		t.Fatalf("want the server's 501 to the cancelled exchange, got %v", err)
	}
	empty := 0
	for _, l := range srv.received() {
		if l == "" {
			empty++
		}
	}
	if empty != 1 {
		t.Fatalf("the client answered %d challenges with an empty line, want 1", empty)
	}
}

// TestEchoedTokenInAMalformedReplyIsNotKept: the same echo without a reply
// code ("unrecognized: <line>" alone) is no reply: net/textproto quotes
// the line in its error, which the SMTPError prints as it is (Code 0).
// The token must not be kept there either.
func TestEchoedTokenInAMalformedReplyIsNotKept(t *testing.T) {
	se, err := dialEchoingAUTH(t, echoTestToken, func(line string) string { return "unrecognized: " + line })
	if se.Code != 0 {
		t.Fatalf("want an error without a reply, got %v", err)
	}
	resp := base64.StdEncoding.EncodeToString(submit.XOAUTH2Response("alerts@contoso.com", echoTestToken))
	keepsNone(t, "", []string{err.Error()}, resp[:40], "c2VjcmV0c2VjcmV0")
}

// TestEchoedTokenInLaterReplyIsNotKept: the AUTH exchange succeeds, and
// the server quotes the client's AUTH line in its refusal of MAIL (a
// server that logs the session's commands into its replies). The
// transaction's error goes into the logs, /status and the message's dead
// letter: the bearer token must not.
func TestEchoedTokenInLaterReplyIsNotKept(t *testing.T) {
	tlsConf, caFile := trustedTLS(t)
	authLine, inAuth := "", false
	srv := startScriptedSMTP(t, tlsConf, func(line string, write func(string)) {
		switch cmd := strings.ToUpper(strings.Fields(line + " x")[0]); {
		case inAuth || cmd == "AUTH" && len(strings.Fields(line)) == 3:
			authLine, inAuth = line, false
			write("235 2.7.0 Authentication successful")
		case cmd == "AUTH":
			inAuth = true
			write("334 ")
		case cmd == "MAIL":
			write("550 5.7.1 refused; session began with " + authLine)
		default:
			write("250 ok")
		}
	})
	token := echoTestToken
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := (&submit.Transport{}).Dial(ctx, submit.Endpoint{Addr: srv.ln.Addr().String(), CAFile: caFile}, "alerts@contoso.com", token)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Send(ctx, "alerts@contoso.com", []string{"ops@fabrikam.com"}, []byte("Subject: x\r\n\r\nbody\r\n"))
	var se *submit.SMTPError
	if !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("want the 550 refusal of MAIL, got %v", err)
	}
	resp := base64.StdEncoding.EncodeToString(submit.XOAUTH2Response("alerts@contoso.com", token))
	keepsNone(t, "", []string{err.Error(), se.Text, se.Reply(), se.Err.Error()}, resp[:40], "c2VjcmV0c2VjcmV0")
	if !strings.Contains(err.Error(), "550 5.7.1 refused") {
		t.Fatalf("the reply itself is lost: %v", err)
	}
}

// TestReencodedTokenIsNotKept: a server that quotes the AUTH response
// it could not use in another encoding than it came in (the decoded
// response as hex, or re-encoded base64url) put the bearer token in the
// refusal as well, in a form the redaction did not look for.
func TestReencodedTokenIsNotKept(t *testing.T) {
	token := echoTestToken
	resp := submit.XOAUTH2Response("alerts@contoso.com", token)
	for name, echo := range map[string]string{
		"hex":       hex.EncodeToString(resp),
		"HEX":       strings.ToUpper(hex.EncodeToString([]byte(token))),
		"base64url": base64.RawURLEncoding.EncodeToString(resp),
	} {
		t.Run(name, func(t *testing.T) {
			se, err := dialEchoingAUTH(t, token, func(string) string {
				return "535 5.7.3 Authentication unsuccessful, could not use " + echo
			})
			if se.Class != submit.ClassAuth {
				t.Fatalf("want an auth error, got %v", err)
			}
			keepsNone(t, " ("+name+")", []string{err.Error(), se.Text, se.Reply(), se.Err.Error()}, echo[:64], echo[200:264])
			if !strings.Contains(err.Error(), "535 5.7.3 Authentication unsuccessful") {
				t.Fatalf("the reply itself is lost: %v", err)
			}
		})
	}
}
