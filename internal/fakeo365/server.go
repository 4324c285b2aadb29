package fakeo365

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/message"
)

// Config tunes the fake. The zero value of every field except Dir means the
// Office 365 default; for the limits a negative value switches the limit off.
type Config struct {
	AccessTTL          time.Duration // access-token lifetime; default 3599s
	RefreshIdle        time.Duration // refresh token dies after this inactivity (invalid_grant AADSTS700082); default 90 days
	StrictRotation     bool          // a refresh token used once answers invalid_grant AADSTS70008 on reuse
	DefaultMailbox     string        // user signed in when authorize has no login_hint, and for the device flow; default "alerts@contoso.com"
	DeviceApproveAfter int           // device flow: polls answering authorization_pending before approval; default 2, negative = approve on the first poll
	DeviceCodeTTL      time.Duration // device codes' lifetime (expires_in, whole seconds); default 900s
	AuthCodeTTL        time.Duration // authorization codes' lifetime; default 10m (tests on a compressed clock lengthen it)
	PerMinute          int           // messages per mailbox per rolling minute; default 30, negative = off
	PerDay             int           // recipients per mailbox per rolling 24h; default 10000, negative = off
	MaxConns           int           // concurrent authenticated SMTP connections per mailbox; default 3, negative = off
	MaxRecipients      int           // RCPT TO per message before 452 4.5.3; default 500, negative = off
	IdleTimeout        time.Duration // an SMTP session silent this long gets "421 4.4.2" and is closed; default 2m
	// Strict makes the SMTP side keep SMTP's limits as servers other than
	// Office 365 do: a command line longer than 512 octets (RFC 5321
	// §4.5.3.1.4; the XOAUTH2 initial response on the AUTH line) is
	// refused 500 5.5.2, a message with a line longer than 998 octets
	// (§4.5.3.1.6, RFC 5322 §2.1.1) or a bare CR or LF (RFC 5322 §2.3)
	// 554 5.6.0. Office 365 tolerates all three; the relay must not
	// depend on that.
	Strict   bool
	MailDir  string           // if set, each accepted message is also written as <MailDir>/<unix-nanos>-<n>.eml
	Now      func() time.Time // clock for token expiry, refresh idle, device codes and pacing; default time.Now
	Hostname string           // SMTP host name in replies and the certificate; default "fake.outlook.office365.test"
	Dir      string           // where ca.pem is written; required
	Logger   *zerolog.Logger  // optional activity log (nil = silent)
	// OnAccept, if set, is called with every accepted message after it was
	// captured, outside the server's lock (relay bench measures latency
	// with it).
	OnAccept func(Message)
	// CountOnly keeps no accepted message: Messages returns none and
	// WaitMessages only counts (relay bench sends tens of thousands).
	CountOnly bool
}

// Office 365 defaults (docs/office365.md §2 and §3).
const (
	defaultAccessTTL     = 3599 * time.Second
	defaultRefreshIdle   = 90 * 24 * time.Hour
	defaultMailbox       = "alerts@contoso.com"
	defaultDeviceApprove = 2
	defaultDeviceCodeTTL = 900 * time.Second
	defaultAuthCodeTTL   = 10 * time.Minute
	defaultHostname      = "fake.outlook.office365.test"

	maxMessageBytes = 157286400
	smtpIOTimeout   = 2 * time.Minute
	closeTimeout    = 5 * time.Second
)

// ErrClosed is returned by WaitMessages once the server is closed.
var ErrClosed = errors.New("fakeo365: server closed")

func (c Config) withDefaults() Config {
	setDuration := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setLimit := func(n *int, def int) {
		if *n == 0 {
			*n = def
		}
	}
	setDuration(&c.AccessTTL, defaultAccessTTL)
	setDuration(&c.RefreshIdle, defaultRefreshIdle)
	setDuration(&c.IdleTimeout, smtpIOTimeout)
	setDuration(&c.DeviceCodeTTL, defaultDeviceCodeTTL)
	setDuration(&c.AuthCodeTTL, defaultAuthCodeTTL)
	c.DeviceCodeTTL = max(c.DeviceCodeTTL.Truncate(time.Second), time.Second)
	// Office 365's limits, the same constants the relay paces by.
	setLimit(&c.PerMinute, account.DefaultPerMinute)
	setLimit(&c.PerDay, account.DefaultPerDay)
	setLimit(&c.MaxConns, account.DefaultMaxConns)
	setLimit(&c.MaxRecipients, message.RecipientsPerTransaction)
	switch {
	case c.DeviceApproveAfter == 0:
		c.DeviceApproveAfter = defaultDeviceApprove
	case c.DeviceApproveAfter < 0:
		c.DeviceApproveAfter = 0
	}
	if c.DefaultMailbox == "" {
		c.DefaultMailbox = defaultMailbox
	}
	if c.Hostname == "" {
		c.Hostname = defaultHostname
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Server is a running fake. All methods are safe for concurrent use.
type Server struct {
	cfg  Config
	log  zerolog.Logger
	done chan struct{} // closed by Close; wakes hanging token calls and waiters

	dataHeld atomic.Int64  // ends of DATA waiting out DelayNextData now
	connSeq  atomic.Uint64 // numbers SMTP connections (Message.Conn)

	authority string // http://127.0.0.1:PORT
	caFile    string
	caPool    *x509.CertPool

	httpSrv  *http.Server
	smtpSrv  *smtp.Server
	smtpLn   *connTracker
	serving  sync.WaitGroup // the two Serve goroutines
	smtpDone chan struct{}  // closed when the SMTP Serve goroutine returns
	closeMu  sync.Mutex
	closed   bool

	mu sync.Mutex // guards everything below
	identityState
	mailState
}

// Start generates the TLS material, writes Dir/ca.pem and starts both
// services on 127.0.0.1: on the ports they had the last time in Dir when
// those are free, else on kernel-chosen ones (listenAgain).
func Start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("fakeo365: Config.Dir is required")
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:           cfg,
		log:           zerolog.Nop(),
		done:          make(chan struct{}),
		smtpDone:      make(chan struct{}),
		identityState: newIdentityState(),
		mailState:     newMailState(),
	}
	if cfg.Logger != nil {
		s.log = cfg.Logger.With().Str("component", "fakeo365").Logger()
	}

	creds, err := newTLSCredentials(cfg.Hostname)
	if err != nil {
		return nil, err
	}
	s.caPool = creds.pool
	s.caFile = filepath.Join(cfg.Dir, "ca.pem")
	if err := os.WriteFile(s.caFile, creds.caPEM, 0o644); err != nil {
		return nil, fmt.Errorf("fakeo365: write CA: %w", err)
	}
	if cfg.MailDir != "" {
		if err := os.MkdirAll(cfg.MailDir, 0o700); err != nil {
			return nil, fmt.Errorf("fakeo365: create MailDir: %w", err)
		}
	}

	httpLn, err := listenAgain(cfg.Dir, "identity")
	if err != nil {
		return nil, fmt.Errorf("fakeo365: listen HTTP: %w", err)
	}
	rawSMTPLn, err := listenAgain(cfg.Dir, "smtp")
	if err != nil {
		httpLn.Close()
		return nil, fmt.Errorf("fakeo365: listen SMTP: %w", err)
	}
	s.authority = "http://" + httpLn.Addr().String()
	s.smtpLn = newConnTracker(rawSMTPLn)

	s.httpSrv = &http.Server{
		Handler:           s.identityHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(logWriter{s.log}, "", 0),
	}
	s.smtpSrv = s.newSMTPServer(creds)

	s.serving.Add(2)
	go func() {
		defer s.serving.Done()
		if err := s.httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("identity platform stopped")
		}
	}()
	go func() {
		defer s.serving.Done()
		defer close(s.smtpDone)
		if err := s.smtpSrv.Serve(s.smtpLn); err != nil && !s.isClosed() {
			s.log.Error().Err(err).Msg("SMTP server stopped")
		}
	}()
	s.log.Info().Str("authority", s.authority).Str("smtp", s.SMTPAddr()).Msg("fake Office 365 started")
	return s, nil
}

// Close stops both services, closes every open connection, wakes hanging
// token calls and waits for the handlers to return.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.done)

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()

	// Close our listener and connections first and let Serve return, so that
	// go-smtp's Shutdown only has to wait for the handlers already running.
	errs := []error{s.smtpLn.closeAll()}
	<-s.smtpDone
	if err := s.smtpSrv.Shutdown(ctx); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
		errs = append(errs, err)
	}
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		errs = append(errs, err, s.httpSrv.Close())
	}
	s.serving.Wait()
	return errors.Join(errs...)
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// AuthorityURL is the identity platform root, "http://127.0.0.1:PORT".
func (s *Server) AuthorityURL() string { return s.authority }

// AuthURL is the authorize endpoint of tenant.
func (s *Server) AuthURL(tenant string) string { return s.endpoint(tenant, "authorize") }

// TokenURL is the token endpoint of tenant.
func (s *Server) TokenURL(tenant string) string { return s.endpoint(tenant, "token") }

// DeviceURL is the device-authorization endpoint of tenant.
func (s *Server) DeviceURL(tenant string) string { return s.endpoint(tenant, "devicecode") }

func (s *Server) endpoint(tenant, name string) string {
	return s.authority + "/" + tenant + "/oauth2/v2.0/" + name
}

// SMTPAddr is the submission endpoint, "127.0.0.1:PORT".
func (s *Server) SMTPAddr() string { return s.smtpLn.Addr().String() }

// CAFile is the path of the PEM CA certificate that signed the SMTP certificate.
func (s *Server) CAFile() string { return s.caFile }

// ClientID is the public client (app registration) that accounts made by
// Account sign in with; the fake accepts any client ID for public clients.
const ClientID = "00000000-0000-0000-0000-00000000r365"

// Account is an account record of mailbox in tenant that signs in at this
// fake's identity platform (as ClientID) and sends through its SMTP
// endpoint, trusting its CA. Limits and policy are left to Normalize's
// defaults, Office 365's.
func (s *Server) Account(alias, mailbox, tenant string) account.Account {
	return account.Account{
		Alias: alias, Mailbox: mailbox, Tenant: tenant, Authority: s.AuthorityURL(),
		ClientID: ClientID, SMTPAddr: s.SMTPAddr(), CAFile: s.CAFile(),
	}
}

// CertPool holds the CA that signed the SMTP certificate.
func (s *Server) CertPool() *x509.CertPool { return s.caPool.Clone() }

func (s *Server) now() time.Time { return s.cfg.Now() }

// key normalises a mailbox or tenant for map lookups.
func key(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// logWriter adapts the zerolog logger to the *log.Logger and smtp.Logger
// interfaces used by net/http and go-smtp for their internal errors.
type logWriter struct{ l zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (w logWriter) Printf(format string, v ...any) { w.l.Debug().Msgf(format, v...) }
func (w logWriter) Println(v ...any)               { w.l.Debug().Msg(strings.TrimSpace(fmt.Sprintln(v...))) }

// listenAgain listens on 127.0.0.1 at the port Dir/<name>.addr names
// (this fake's previous run in Dir), or at a kernel-chosen port if there
// is none or it is taken, and writes down the port it got. A restarted
// sandbox's stored accounts name the previous run's token endpoint and
// SMTP server; with the same ports they work at once, before the sandbox
// connects its account again, instead of failing and retrying.
func listenAgain(dir, name string) (net.Listener, error) {
	file := filepath.Join(dir, name+".addr")
	if b, err := os.ReadFile(file); err == nil {
		if ap, err := netip.ParseAddrPort(strings.TrimSpace(string(b))); err == nil && ap.Addr().IsLoopback() && ap.Port() != 0 {
			if ln, err := net.Listen("tcp", ap.String()); err == nil {
				return ln, nil
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
