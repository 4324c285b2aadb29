package ingress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/clock"
	"relay365/internal/connlimit"
	"relay365/internal/crashpoint"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Defaults of the SMTP front door, shared with relay serve's flags.
const (
	DefaultMaxConns       = 100
	DefaultMaxConnsPerIP  = 20
	DefaultTimeout        = 2 * time.Minute
	DefaultPublishTimeout = 10 * time.Second
	// DefaultMaxMessageBytes is Office 365's limit: a larger message
	// could never be sent, so it is refused before it is queued.
	DefaultMaxMessageBytes = message.MaxSize
)

// Config is the SMTP front door's configuration. A listener is on when
// its address is set; TLS is required for both (the daemon makes a
// loopback certificate when the operator gives none).
type Config struct {
	Listen          string      // submission with STARTTLS (RFC 6409, RFC 3207), e.g. 127.0.0.1:2525
	ListenTLS       string      // submission over implicit TLS (RFC 8314 §3.3), e.g. 127.0.0.1:2465
	TLS             *tls.Config // the listeners' certificate
	Hostname        string      // greeting, EHLO and Received; default os.Hostname
	MaxMessageBytes int64       // advertised with SIZE (RFC 1870); default DefaultMaxMessageBytes
	MaxConns        int         // connections open at once; default DefaultMaxConns
	MaxConnsPerIP   int         // of those, from one client address; default DefaultMaxConnsPerIP
	Timeout         time.Duration
	PublishTimeout  time.Duration // how long a message may wait for JetStream's PubAck before 451
}

func (c *Config) defaults() {
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
		if c.Hostname == "" {
			c.Hostname = "relay365"
		}
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerIP <= 0 {
		c.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
}

// Enabled reports whether any listener is configured.
func (c Config) Enabled() bool { return c.Listen != "" || c.ListenTLS != "" }

// Deps are the front door's collaborators.
type Deps struct {
	JS        jetstream.JetStream
	Accounts  *account.Registry
	Producers *Producers
	Registry  prometheus.Registerer
	Log       zerolog.Logger
	Clock     clock.Clock // the backoff of failed logins; default real
}

// Server is the running SMTP front door.
type Server struct {
	cfg      Config
	deps     Deps
	log      zerolog.Logger
	metrics  *metrics
	lockout  *lockout
	verify   *verifier
	accounts *cache[account.Account]
	prods    *cache[Producer]
	smtp     *smtp.Server
	addrs    [2]net.Addr // STARTTLS, implicit TLS; nil when off
	cancel   context.CancelFunc
	sessions atomic.Int64
	done     sync.WaitGroup
}

// Start opens the listeners and serves until Close.
func Start(ctx context.Context, cfg Config, d Deps) (_ *Server, err error) {
	cfg.defaults()
	if cfg.TLS == nil {
		return nil, errors.New("SMTP front door: a TLS certificate is required (AUTH only after TLS)")
	}
	if d.Clock == nil {
		d.Clock = clock.Real()
	}
	s := &Server{
		cfg: cfg, deps: d, log: d.Log.With().Str("component", "smtp-ingress").Logger(),
		metrics: newMetrics(d.Registry), lockout: newLockout(d.Clock), verify: newVerifier(2),
	}
	s.metrics.sessionsFunc(func() float64 { return float64(s.sessions.Load()) })
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.accounts, err = followAccounts(wctx, ctx, d.Accounts); err != nil {
		return nil, err
	}
	if s.prods, err = followProducers(wctx, ctx, d.Producers); err != nil {
		return nil, err
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.TLSConfig = cfg.TLS
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = message.MaxRecipients
	// A line longer than SMTP allows reaches the renderer, which refuses
	// it with a reason (554 5.6.0) or folds it (a header), instead of
	// go-smtp's bare "line too long" at 2,000.
	srv.MaxLineLength = 64 << 10
	srv.ReadTimeout, srv.WriteTimeout = cfg.Timeout, cfg.Timeout
	srv.AllowInsecureAuth = false // AUTH only after STARTTLS or on the implicit TLS listener
	srv.ErrorLog = zlogAdapter{s.log}
	s.smtp = srv
	for i, l := range []struct {
		addr     string
		implicit bool
	}{{cfg.Listen, false}, {cfg.ListenTLS, true}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return nil, fmt.Errorf("SMTP listener %s: %w", l.addr, err)
		}
		s.addrs[i] = ln.Addr()
		var lim net.Listener = connlimit.New(ln, connlimit.Config{Max: cfg.MaxConns, PerIP: cfg.MaxConnsPerIP, Refuse: s.refuse})
		if l.implicit {
			lim = tls.NewListener(lim, cfg.TLS)
		}
		s.done.Add(1)
		go func() {
			defer s.done.Done()
			_ = srv.Serve(lim)
		}()
		s.log.Info().Str("addr", ln.Addr().String()).Bool("implicit_tls", l.implicit).Msg("SMTP submission listening")
	}
	return s, nil
}

// Addr is the STARTTLS listener's address (resolved port); nil when off.
func (s *Server) Addr() net.Addr { return s.addrs[0] }

// TLSAddr is the implicit TLS listener's address; nil when off.
func (s *Server) TLSAddr() net.Addr { return s.addrs[1] }

// Close stops accepting and closes every connection; a message whose
// PubAck has not come yet gets no 250, so its client tries again.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	var err error
	if s.smtp != nil {
		err = s.smtp.Close()
		s.done.Wait()
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// Replies, each citing what it means (RFC 3463 enhanced codes).
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"} // RFC 4954 §6
	errUnparseable  = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message cannot be parsed: " + oneLine(why)}
	}
	errNotAllowed = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: oneLine(why)}
	}
	errQueueDown = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Queue unavailable, try again later"}
	errQueueFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Queue full, try again later"}
	errTooLarge  = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big for Office 365"}
	errBadRcpt   = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: oneLine(why)}
	}
	errNoAccount = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: oneLine(why)}
	}
)

// oneLine keeps a reason to one reply line (RFC 5321 §4.2: a reply line
// ends at CRLF; the reason may quote the client's input).
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.sessions.Add(1)
	ss := &session{s: s, conn: c, remote: connlimit.RemoteIP(c.Conn().RemoteAddr())}
	ss.log = s.log.With().Str("remote", ss.remote).Logger()
	return ss, nil
}

// session is one client connection after EHLO.
type session struct {
	s        *Server
	conn     *smtp.Conn
	remote   string
	log      zerolog.Logger
	producer *Producer
	envFrom  string
	acct     *account.Account // picked at MAIL when the envelope sender decides
	rcpts    []string
	loggedIn bool
}

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return smtp.ErrAuthFailed // acting for someone else is not offered
			}
			return ss.login(username, password)
		}), nil
	case sasl.Login:
		return newLoginServer(ss.login), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks a producer's name and password within the backoff rules
// (auth.go). The password is never logged.
func (ss *session) login(name, password string) error {
	s := ss.s
	keys := []string{"ip:" + ss.remote, "name:" + name}
	if wait := s.lockout.locked(keys...); wait > 0 {
		s.metrics.authFailures.WithLabelValues("locked_out").Inc()
		ss.log.Warn().Str("producer", name).Dur("locked_for", wait).Msg("SMTP AUTH refused: too many failures")
		return errLockedOut(wait)
	}
	p, ok := s.prods.get(name)
	if !ok {
		// The watch may not have seen a producer added a moment ago.
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
		pr, err := s.deps.Producers.Get(ctx, name)
		cancel()
		if err == nil {
			p, ok = pr, true
		}
	}
	good := false
	if ok {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		good, _ = s.verify.check(ctx, p, password)
		cancel()
	}
	if !good {
		s.lockout.fail(keys...)
		s.metrics.authFailures.WithLabelValues("bad_credentials").Inc()
		ss.log.Warn().Str("producer", name).Msg("SMTP AUTH failed: unknown producer or wrong password")
		return smtp.ErrAuthFailed
	}
	s.lockout.succeed(keys...)
	ss.producer = &p
	ss.log = ss.log.With().Str("producer", p.Name).Logger()
	return nil
}

func (ss *session) producerLabel() string {
	if ss.producer == nil {
		return "none"
	}
	return ss.producer.Name
}

// Mail starts a transaction. (A SIZE= over the limit never gets here:
// go-smtp answers it 552 5.3.4 itself, RFC 1870 §6.1.)
func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.producer == nil {
		return errAuthRequired
	}
	ss.envFrom, ss.acct, ss.rcpts = from, nil, nil
	if from == "" {
		return nil // the null sender: the From field decides
	}
	a, err := ss.pick(from)
	if err != nil {
		ss.s.metrics.message(ss.producerLabel(), resultNotAllowed)
		return err
	}
	ss.acct = a
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.producer == nil {
		return errAuthRequired
	}
	if _, err := message.ParseAddress("recipient", to); err != nil {
		return errBadRcpt(err.Error())
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

// pick chooses the account a message goes through, from the producer's
// accounts: the one whose mailbox or send-as list holds addr. An address
// that belongs to an account the producer may not use is refused (550
// 5.7.1); an address of no account leaves the choice open (nil).
func (ss *session) pick(addr string) (*account.Account, error) {
	p := ss.producer
	var mine *account.Account
	var other string
	ss.s.accounts.each(func(a account.Account) bool {
		if !sendsAs(a, addr) {
			return true
		}
		if p.May(a.Alias) {
			found := a // only the match is copied to the heap
			mine = &found
			return false
		}
		other = a.Alias
		return true
	})
	if mine != nil {
		return mine, nil
	}
	if other != "" {
		return nil, errNotAllowed(fmt.Sprintf("producer %s may not send through account %s (%s)", p.Name, other, addr))
	}
	return nil, nil
}

func sendsAs(a account.Account, addr string) bool {
	if strings.EqualFold(a.Mailbox, addr) {
		return true
	}
	for _, sa := range a.SendAs {
		if strings.EqualFold(sa, addr) {
			return true
		}
	}
	return false
}

// first is the producer's first registered account.
func (ss *session) first() (*account.Account, error) {
	for _, alias := range ss.producer.Accounts {
		if a, ok := ss.s.accounts.get(alias); ok {
			return &a, nil
		}
	}
	return nil, errNoAccount(fmt.Sprintf("none of producer %s's accounts (%s) is registered; connect one with authtool login", ss.producer.Name, strings.Join(ss.producer.Accounts, ", ")))
}

func (ss *session) Data(r io.Reader) error {
	if ss.producer == nil {
		return errAuthRequired
	}
	label := ss.producerLabel()
	raw, err := io.ReadAll(r)
	if err != nil {
		// go-smtp's limit reader: 552 5.3.4, or the connection failed.
		ss.s.metrics.message(label, resultTooLarge)
		return err
	}
	res, err := ss.queue(raw)
	ss.s.metrics.message(label, res)
	return err
}

// queue turns one DATA into a queued message: the account's rules are
// checked first (a message that could never go is refused now, never
// dead-lettered later), then 250 only after JetStream's PubAck.
func (ss *session) queue(raw []byte) (result, error) {
	p, res, err := ss.prepare(ss.conn.Hostname(), raw)
	if err != nil {
		return res, err
	}
	log := p.log
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	pub, err := queue.Publish(ctx, ss.s.deps.JS, p.acct.Alias, p.id, p.data)
	switch {
	case queue.IsFull(err):
		log.Warn().Err(err).Int("smtp_code", 452).Msg("MAIL stream full; message refused for now")
		return resultFull, errQueueFull
	case err != nil:
		log.Warn().Err(err).Int("smtp_code", 451).Msg("message not queued; the client will try again")
		return resultUnavailable, errQueueDown
	}
	log.Info().Uint64("stream_seq", pub.Seq).Int("recipients", len(ss.rcpts)).Int("bytes", p.size).Int("smtp_code", 250).Msg("queued from SMTP")
	return resultAccepted, nil
}

// prepared is a message ready to publish.
type prepared struct {
	acct *account.Account
	id   string
	data []byte // the encoded message.Message
	size int    // the raw message's size as received, normalized
	log  zerolog.Logger
}

// prepare is queue's work before the publish: parse, pick the account,
// validate and render as the worker will; helo is what the client said at
// EHLO. An error is the reply to give.
func (ss *session) prepare(helo string, raw []byte) (prepared, result, error) {
	raw, err := message.NormalizeRaw(raw)
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	hdr, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	acct := ss.acct
	if acct == nil {
		if from, err := mail.ParseAddress(hdr.Header.Get("From")); err == nil {
			if acct, err = ss.pick(from.Address); err != nil {
				return prepared{}, resultNotAllowed, err
			}
		}
	}
	if acct == nil {
		if acct, err = ss.first(); err != nil {
			ss.log.Warn().Err(err).Int("smtp_code", 451).Msg("message not queued: none of the producer's accounts is connected")
			return prepared{}, resultUnavailable, err
		}
	}
	id := message.NewID()
	m := &message.Message{ID: id, Account: acct.Alias, To: ss.rcpts, Raw: ss.received(id, helo, raw)}
	log := ss.log.With().Str("account", acct.Alias).Str("msg_id", id).Logger()
	if err := m.Validate(); err != nil {
		log.Info().Err(err).Int("smtp_code", 554).Msg("SMTP message refused")
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	// Render it as the worker will, with the account's From policy: a
	// From the account may not use is refused now, not dead-lettered.
	if _, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox, Policy: acct.FromPolicy, SendAs: acct.SendAs}, ss.s.deps.Clock.Now()); err != nil {
		var inv *message.Invalid
		switch {
		case errors.As(err, &inv) && (inv.Field == "from" || inv.Field == "sender"):
			log.Info().Err(err).Int("smtp_code", 550).Msg("SMTP message refused by the account's From policy")
			return prepared{}, resultNotAllowed, errNotAllowed(err.Error())
		case strings.Contains(err.Error(), "accepts at most"):
			return prepared{}, resultTooLarge, errTooLarge
		}
		log.Info().Err(err).Int("smtp_code", 554).Msg("SMTP message refused")
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	data, inline, err := message.EncodeInline(m)
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	if !inline {
		// Too large for a NATS message: the content goes to the body
		// store, the message names it (internal/body).
		if data, err = ss.storeBody(m, log); err != nil {
			return prepared{}, resultUnavailable, errQueueDown
		}
		// Stored, not yet published: a crash here leaves a body no
		// message names (the sweeper's), and the client no reply.
		crashpoint.Hit(crashpoint.IngressBodyStored)
	}
	return prepared{acct: acct, id: id, data: data, size: len(raw), log: log}, "", nil
}

// received prepends the trace field every SMTP server adds (RFC 5321
// §4.4; "ESMTPSA": ESMTP with STARTTLS or TLS and AUTH, RFC 3848).
func (ss *session) received(id, helo string, raw []byte) []byte {
	helo = strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' || r == '(' || r == ')' || r == ';' {
			return -1
		}
		return r
	}, helo)
	trace := fmt.Sprintf("Received: from %s ([%s])\r\n\tby %s (Relay365) with ESMTPSA id %s;\r\n\t%s\r\n",
		helo, ss.remote, ss.s.cfg.Hostname, id, ss.s.deps.Clock.Now().Format(time.RFC1123Z))
	return append([]byte(trace), raw...)
}

func (ss *session) Reset() { ss.envFrom, ss.acct, ss.rcpts = "", nil, nil }

func (ss *session) Logout() error {
	ss.s.sessions.Add(-1)
	return nil
}

// zlogAdapter gives go-smtp's internal error log to zerolog.
type zlogAdapter struct{ log zerolog.Logger }

func (z zlogAdapter) Printf(format string, v ...any) { z.log.Debug().Msgf(format, v...) }
func (z zlogAdapter) Println(v ...any)               { z.log.Debug().Msg(fmt.Sprint(v...)) }

// refuse answers a connection over a limit as RFC 5321 §3.8 says a server
// that cannot serve does (421, then close), never waiting long on a client
// that does not read.
func (s *Server) refuse(c net.Conn, reason string) {
	s.metrics.refusedConns.Inc()
	s.log.Warn().Str("reason", reason).Msg("SMTP connection refused")
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write([]byte("421 4.7.0 " + reason + ", try again later\r\n"))
	_ = c.Close()
}

// storeBody stores a large message's content and returns the JSON of the
// message that names it, with the envelope of the session. A body stored
// whose publish then fails is the sweeper's.
func (ss *session) storeBody(m *message.Message, log zerolog.Logger) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	store, err := body.Open(ctx, ss.s.deps.JS)
	if err != nil {
		log.Warn().Err(err).Int("smtp_code", 451).Msg("body store unavailable; message not queued")
		return nil, err
	}
	data, err := store.StoreMessage(ctx, m, bytes.NewReader(m.Raw), message.MaxSize+MaxReceivedHeader)
	if err != nil {
		log.Warn().Err(err).Int("smtp_code", 451).Msg("body not stored; message not queued")
	}
	return data, err
}

// MaxReceivedHeader bounds the trace field the front door prepends.
const MaxReceivedHeader = 1024
