package relay

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
	c          *smtp.Client
	ep         Endpoint
	user       string
	token      string
	pipelining bool        // the server offered PIPELINING (RFC 2920)
	lastUsed   time.Time   // for idle close
	dirty      bool        // a transaction failed: RSET before the next (RFC 5321 §4.1.1.5)
	broken     atomic.Bool // the connection can no longer be trusted
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
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Auth(NewXOAUTH2(user, token)); err != nil {
		c.Close()
		return nil, classifySMTP("auth", err)
	}
	// go-smtp's client sends one command at a time; PIPELINING is recorded
	// for /status and logs, not used (see the package documentation).
	pipelining, _ := c.Extension("PIPELINING")
	return &Session{c: c, ep: ep, user: user, token: token, pipelining: pipelining, lastUsed: time.Now()}, nil
}

// Send runs one mail transaction (RFC 5321 §3.3): MAIL, RCPT for each
// recipient, DATA. On a reused session a failed previous transaction is
// cleared with RSET first. A cancelled ctx closes the connection. Errors
// are *SMTPError; after one, Reusable says whether the session may serve
// another message.
func (s *Session) Send(ctx context.Context, from string, rcpts []string, data []byte) (err error) {
	stop := context.AfterFunc(ctx, func() { s.broken.Store(true); s.c.Close() })
	defer stop()
	defer func() {
		s.lastUsed = time.Now()
		if err != nil {
			s.dirty = true
			if !keepSession(err) {
				s.broken.Store(true)
			}
		}
	}()
	if s.dirty {
		if err := s.c.Reset(); err != nil {
			return classifySMTP("rset", err)
		}
		s.dirty = false
	}
	if err := s.c.Mail(from, nil); err != nil {
		return classifySMTP("mail", err)
	}
	for _, rcpt := range rcpts {
		if err := s.c.Rcpt(rcpt, nil); err != nil {
			return classifySMTP("rcpt", err)
		}
	}
	w, err := s.c.Data()
	if err != nil {
		return classifySMTP("data", err)
	}
	if _, err := w.Write(data); err != nil {
		return classifySMTP("data", err)
	}
	if _, err := w.CloseWithResponse(); err != nil {
		return classifySMTP("data", err)
	}
	return nil
}

// Reset sends RSET on an idle session before it is reused: it clears any
// transaction state and proves the connection is still alive, before a
// message is committed to it.
func (s *Session) Reset(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.broken.Store(true); s.c.Close() })
	defer stop()
	if err := s.c.Reset(); err != nil {
		s.broken.Store(true)
		return classifySMTP("rset", err)
	}
	s.dirty = false
	return nil
}

// Reusable reports whether the session may carry another message.
func (s *Session) Reusable() bool { return !s.broken.Load() }

// Close sends QUIT (bounded by a short deadline) and closes the connection.
func (s *Session) Close() {
	if s.broken.Load() {
		s.c.Close()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if s.c.Quit() != nil {
			s.c.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(quitTimeout):
		s.c.Close()
		<-done
	}
}

// keepSession: after a reply that refuses only this message the connection
// is fine (RSET clears it); after a network error, a 421 (the server closes,
// RFC 5321 §3.8), or a reply about the session, authentication or the
// connection count, it is not.
func keepSession(err error) bool {
	var se *SMTPError
	if !errors.As(err, &se) || se.Code == 0 || se.Code == 421 {
		return false
	}
	switch se.Class {
	case ClassSession, ClassAuth, ClassConfig, ClassThrottle:
		return false
	}
	return true
}

func (t *Transport) open(ctx context.Context, ep Endpoint) (*smtp.Client, error) {
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
		return nil, classifySMTP("dial", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	// NewClientStartTLS reads the greeting, sends EHLO, fails unless
	// STARTTLS is offered, and upgrades. The deadline bounds all of it.
	conn.SetDeadline(time.Now().Add(durationOr(t.CommandTimeout, 60*time.Second)))
	c, err := smtp.NewClientStartTLS(conn, tlsConf)
	if err != nil {
		conn.Close()
		if strings.Contains(err.Error(), "support STARTTLS") {
			// go-smtp's own words for a server without STARTTLS.
			return nil, &SMTPError{Stage: "tls", Class: ClassConfig, Err: errors.New("server does not offer STARTTLS; refusing to authenticate in plaintext")}
		}
		return nil, classifySMTP("tls", err)
	}
	// EHLO again, now inside TLS (RFC 3207 §4.2): this runs the handshake,
	// so a certificate problem is reported here, before any AUTH.
	name := t.LocalName
	if name == "" {
		name = "localhost"
	}
	if err := c.Hello(name); err != nil {
		c.Close()
		return nil, classifySMTP("tls", err)
	}
	conn.SetDeadline(time.Time{})
	c.CommandTimeout = durationOr(t.CommandTimeout, 60*time.Second)
	c.SubmissionTimeout = durationOr(t.DataTimeout, 5*time.Minute)
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
