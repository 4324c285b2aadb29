package submit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/message"
	"relay365/internal/smtpclient"
)

// Endpoint is where and how an account's mail is submitted.
type Endpoint struct {
	Addr   string // host:port, e.g. smtp.office365.com:587
	CAFile string // extra trusted roots (PEM), on top of the system's
}

// Transport opens authenticated SMTP sessions over STARTTLS with AUTH
// XOAUTH2. The delivery engine keeps them in per-account pools; Send is the
// one-shot form the consent step uses for its test mail.
type Transport struct {
	LocalName      string        // EHLO name; default "localhost"
	DialTimeout    time.Duration // default 15s
	CommandTimeout time.Duration // default 60s per command
	DataTimeout    time.Duration // default 5m for the reply to the end of DATA

	mu    sync.Mutex
	pools map[string]*x509.CertPool // CA file → roots, read once
}

// quitTimeout bounds the QUIT of a session being closed.
const quitTimeout = 2 * time.Second

// Send delivers r as user with an access token on a session of its own,
// then quits. The returned error is always an *SMTPError.
func (t *Transport) Send(ctx context.Context, ep Endpoint, user, token string, r *message.Rendered) error {
	s, err := t.Dial(ctx, ep, user, token)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Send(ctx, r.MailFrom, r.Rcpts, r.Data)
}

// Session is one SMTP connection that passed STARTTLS and AUTH XOAUTH2. It
// is used by one goroutine at a time. It remembers the access token it
// authenticated with (never printed), so a pool can tell a session opened
// with a token that has since been replaced.
type Session struct {
	c        *smtpclient.Client
	ep       Endpoint
	user     string
	token    string
	lastUsed time.Time   // for idle close
	reused   bool        // carried a transaction before (set by the pool)
	broken   atomic.Bool // the connection can no longer be trusted
	// settled is closed when the bookkeeping of the session's last
	// accepted transaction is done (Follow); nil when there is none.
	settled <-chan struct{}
}

// Follow hands the session the signal of its new transaction (done, closed
// by the caller when the transaction's bookkeeping is written) and returns
// the previous transaction's, nil if there is none. A session carries one
// transaction at a time, so this needs no lock. The relay holds the end of
// a transaction's content until the previous one's idempotency marker is
// written: a crash can then repeat at most one message per session.
func (s *Session) Follow(done <-chan struct{}) (prev <-chan struct{}) {
	prev, s.settled = s.settled, done
	return prev
}

// Dial connects, upgrades with STARTTLS and authenticates with XOAUTH2.
// STARTTLS is mandatory: a server that does not offer it gets no AUTH and no
// mail (RFC 3207 §4 lets a client refuse; with a bearer token in AUTH we
// must). Errors are *SMTPError.
func (t *Transport) Dial(ctx context.Context, ep Endpoint, user, token string) (*Session, error) {
	c, err := t.open(ctx, ep)
	if err != nil {
		return nil, err
	}
	if err := c.Auth(ctx, NewXOAUTH2(user, token)); err != nil {
		c.Close()
		return nil, scrubAuth(Classify("auth", err), user, token)
	}
	return &Session{c: c, ep: ep, user: user, token: token, lastUsed: time.Now()}, nil
}

// Pipelining reports whether the session pipelines its transactions (the
// server offered PIPELINING, RFC 2920).
func (s *Session) Pipelining() bool { return s.c.Pipelining() }

// Send runs one mail transaction (RFC 5321 §3.3): MAIL, RCPT for each
// recipient, DATA, pipelined when the server offers it (smtpclient). After
// a failed transaction the next one starts with RSET. A cancelled ctx
// closes the connection. Errors are *SMTPError; after one, Reusable says
// whether the session may serve another message.
func (s *Session) Send(ctx context.Context, from string, rcpts []string, data []byte) error {
	return s.SendContent(ctx, from, rcpts, smtpclient.Bytes(data))
}

// SendContent is Send for content streamed from where it is kept. A
// failure to read it is returned as the *smtpclient.ContentError itself,
// not an *SMTPError: no reply was had, the server discarded the
// transaction (nothing was delivered), and what the failure means (a body
// gone for good, a store that did not answer) is the caller's to say.
func (s *Session) SendContent(ctx context.Context, from string, rcpts []string, content smtpclient.Content) error {
	_, err := s.send(ctx, from, rcpts, content, nil)
	return err
}

// RcptRefusal is a recipient refused at RCPT with a reply about that
// recipient alone, while the transaction went to the others (SendSome):
// for good (class message) or for now (class transient: Temporary).
type RcptRefusal struct {
	Rcpt string
	Err  *SMTPError // stage rcpt, class message or transient
}

// SendSome is SendContent for a transaction that goes to the recipients
// the server accepted when it refused others for reasons of their own
// (RFC 5321 §3.3, §4.2.5): a 5xx to RCPT whose class, here at the SMTP
// boundary, is ClassMessage (550 5.1.1 and the like), or a 450, 451 or
// 452 of class transient that is not about the number of recipients
// (X.5.3, the server's recipient limit: RecipientLimit) — rcptOnly. nil
// error with refusals means the content was accepted for every
// recipient but those. Any other refusal (a 421, a 4xx or 5xx about the
// account, the tenant, the session or the recipient count) ends the
// transaction with nothing sent, as SendContent does; so does a
// transaction whose every recipient was refused, with the first refusal
// as its error.
func (s *Session) SendSome(ctx context.Context, from string, rcpts []string, content smtpclient.Content) ([]RcptRefusal, error) {
	return s.send(ctx, from, rcpts, content, func(r *smtp.SMTPError) bool {
		return rcptOnly(Classify("rcpt", &smtpclient.Error{Command: "RCPT", Err: r}))
	})
}

// rcptOnly says whether a refusal of a RCPT is about that recipient alone.
func rcptOnly(e *SMTPError) bool {
	switch {
	case e.Class == ClassMessage:
		return true
	case e.Class != ClassTransient, e.Code != 450 && e.Code != 451 && e.Code != 452:
		return false
	}
	return !strings.HasSuffix(e.Enhanced, ".5.3") // too many recipients: the transaction's, not this one's
}

func (s *Session) send(ctx context.Context, from string, rcpts []string, content smtpclient.Content, skip func(*smtp.SMTPError) bool) ([]RcptRefusal, error) {
	skipped, err := s.c.SendSome(ctx, from, rcpts, content, skip)
	s.lastUsed = time.Now()
	if err == nil {
		var out []RcptRefusal
		for _, r := range skipped {
			// The server has had the token: a reply may quote it.
			se := scrubAuth(Classify("rcpt", &smtpclient.Error{Command: "RCPT", Err: r.Reply}), s.user, s.token)
			out = append(out, RcptRefusal{Rcpt: r.Rcpt, Err: se})
		}
		return out, nil
	}
	var ce *smtpclient.ContentError
	if errors.As(err, &ce) {
		s.broken.Store(true)
		return nil, ce
	}
	// The server has had the token: a reply of any stage may quote it.
	se := scrubAuth(Classify("", err), s.user, s.token)
	if s.c.Broken() || !keepSession(se) {
		s.broken.Store(true)
	}
	return nil, se
}

// Reusable reports whether the session may carry another message.
func (s *Session) Reusable() bool { return !s.broken.Load() }

// Close sends QUIT (bounded by a short deadline) and closes the connection.
func (s *Session) Close() {
	if s.broken.Load() {
		s.c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()
	s.c.Quit(ctx)
}

// keepSession: after a reply that refuses only this message, or a local
// refusal (nothing sent), the connection is fine (RSET clears it); after a
// 421 (the server closes, RFC 5321 §3.8), or a reply about the session,
// authentication or the connection count, it is not. Network errors and
// anything that put the client out of step with the server break the
// client itself (smtpclient.Client.Broken).
func keepSession(se *SMTPError) bool {
	if se.Code == 421 {
		return false
	}
	switch se.Class {
	case ClassSession, ClassAuth, ClassConfig, ClassThrottle:
		return false
	}
	return true
}

// NotStarted reports whether a transaction failed on a reused session
// through no fault of the message, before the server took any of it: the
// connection was lost, closed with 421 (as Office 365 does to idle
// sessions) or refused the RSET that clears the last transaction, all
// before the content was sent. The message can go at once on another
// session.
func (s *Session) NotStarted(err error) bool {
	var se *SMTPError
	return s.reused && errors.As(err, &se) && se.Stage != "message" &&
		(se.Code == 421 || s.c.Broken() && (se.Stage == "rset" || se.Code == 0))
}

func (t *Transport) open(ctx context.Context, ep Endpoint) (*smtpclient.Client, error) {
	host, _, err := net.SplitHostPort(ep.Addr)
	if err != nil {
		return nil, &SMTPError{Stage: "dial", Class: ClassConfig, Err: fmt.Errorf("smtp address %q: %w", ep.Addr, err)}
	}
	tlsConf, err := t.tlsConfig(host, ep.CAFile)
	if err != nil {
		return nil, &SMTPError{Stage: "tls", Class: ClassConfig, Err: err}
	}
	d := net.Dialer{Timeout: durationOr(t.DialTimeout, 15*time.Second)}
	conn, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, Classify("dial", err)
	}
	// Greeting, EHLO, STARTTLS, the TLS handshake and EHLO again: a
	// certificate problem is reported here, before any AUTH.
	c, err := smtpclient.StartTLS(ctx, conn, smtpclient.Config{
		LocalName:      t.LocalName,
		TLS:            tlsConf,
		CommandTimeout: t.CommandTimeout,
		DataTimeout:    t.DataTimeout,
	})
	if err != nil {
		return nil, Classify("tls", err)
	}
	return c, nil
}

func (t *Transport) tlsConfig(host, caFile string) (*tls.Config, error) {
	conf := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return conf, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if pool, ok := t.pools[caFile]; ok {
		conf.RootCAs = pool
		return conf, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	if t.pools == nil {
		t.pools = map[string]*x509.CertPool{}
	}
	t.pools[caFile] = pool
	conf.RootCAs = pool
	return conf, nil
}

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
