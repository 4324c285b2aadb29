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
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/message"
)

// Endpoint is where and how an account's mail is submitted.
type Endpoint struct {
	Addr   string // host:port, e.g. smtp.office365.com:587
	CAFile string // extra trusted roots (PEM), on top of the system's
}

// Transport submits messages over SMTP with STARTTLS and AUTH XOAUTH2. It is
// the seam where the pooled session engine plugs in later; today it opens
// one session per message.
type Transport struct {
	LocalName      string        // EHLO name; default "localhost"
	DialTimeout    time.Duration // default 15s
	CommandTimeout time.Duration // default 60s per command
	DataTimeout    time.Duration // default 5m for the reply to the end of DATA

	mu    sync.Mutex
	pools map[string]*x509.CertPool // CA file → roots, read once
}

// Send delivers r as user with an access token. STARTTLS is mandatory: a
// server that does not offer it gets no AUTH and no mail (RFC 3207 §4 lets a
// client refuse; with a bearer token in AUTH we must). The returned error is
// always an *SMTPError.
func (t *Transport) Send(ctx context.Context, ep Endpoint, user, token string, r *message.Rendered) error {
	c, err := t.open(ctx, ep)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	if err := c.Auth(NewXOAUTH2(user, token)); err != nil {
		return classifySMTP("auth", err)
	}
	if err := c.Mail(r.MailFrom, nil); err != nil {
		return classifySMTP("mail", err)
	}
	for _, rcpt := range r.Rcpts {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return classifySMTP("rcpt", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return classifySMTP("data", err)
	}
	if _, err := w.Write(r.Data); err != nil {
		return classifySMTP("data", err)
	}
	if _, err := w.CloseWithResponse(); err != nil {
		return classifySMTP("data", err)
	}
	_ = c.Quit() // the message is accepted; a failed QUIT changes nothing
	return nil
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
