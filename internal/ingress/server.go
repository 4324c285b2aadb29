package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/connlimit"
	"relay365/internal/message"
	"relay365/internal/termsafe"
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
	MaxConns        int         // connections open at once, on both listeners together; default DefaultMaxConns
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
	cfg       Config
	deps      Deps
	log       zerolog.Logger
	metrics   *metrics
	lockout   *lockout
	verify    *verifier
	accounts  *cache[account.Account]
	prods     *cache[Producer]
	smtp      *smtp.Server
	addrs     [2]net.Addr // STARTTLS, implicit TLS; nil when off
	lns       []net.Listener
	cancel    context.CancelFunc
	refusals  logLimiter // connections refused over the limits
	lockedOut logLimiter // AUTH refused during a lockout
	sessions  atomic.Int64
	done      sync.WaitGroup
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
	srv.MaxLineLength = maxLineLength
	srv.ReadTimeout, srv.WriteTimeout = cfg.Timeout, cfg.Timeout
	// AUTH only after STARTTLS or on the implicit TLS listener. The
	// session refuses it before TLS (encrypted): go-smtp's own refusal,
	// with AllowInsecureAuth false, is 523 5.7.10, not RFC 4954's 538.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = zlogAdapter{s.log}
	s.smtp = srv
	var limit *connlimit.Listener // both listeners share one set of limits
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
		s.lns = append(s.lns, ln)
		refuse := s.refuse
		if l.implicit {
			refuse = s.refuseTLS
		}
		if limit == nil {
			limit = connlimit.New(ln, connlimit.Config{Max: cfg.MaxConns, PerIP: cfg.MaxConnsPerIP, Refuse: refuse,
				Dropped: func(reason string) { s.refused(reason, "none", nil) }})
		} else {
			limit = limit.Share(ln, refuse)
		}
		var lim net.Listener = loginListener{Listener: limit, window: cfg.Timeout}
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
		// go-smtp closes only the listeners its Serve has registered: one
		// whose goroutine had not run yet (Start failing on the second
		// listener, its port taken) went on accepting, and Wait below
		// never returned; the sandbox then hung at start instead of
		// saying which port was taken.
		for _, ln := range s.lns {
			_ = ln.Close()
		}
		s.done.Wait()
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// maxLineLength is the longest line the listener reads (go-smtp's
// MaxLineLength); a longer one in DATA is refused with 554 5.6.0.
const maxLineLength = 64 << 10

// Replies, each citing what it means (RFC 3463 enhanced codes).
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"} // RFC 4954 §6
	errUnparseable  = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message cannot be parsed: " + ReplyText(why)}
	}
	errNotAllowed = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: ReplyText(why)}
	}
	// errCredentialsChanged: RFC 4954 §6, 454 4.7.0 temporary
	// authentication failure: the session's producer was removed or
	// replaced after it authenticated.
	errCredentialsChanged = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Credentials changed since this session authenticated: connect and authenticate again"}
	errQueueDown = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Queue unavailable, try again later"}
	errQueueFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Queue full, try again later"}
	// errTooLarge: RFC 1870 §6.1 (552 at MAIL with SIZE=, or at the end of
	// DATA), RFC 3463 §3.4 (X.3.4 message too big for system).
	errTooLarge = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: ReplyText(why)}
	}
	// errHeaderTooLarge: a header section that does not end within the
	// part of DATA a session holds is refused as content the relay cannot
	// handle (RFC 5321 §4.2.3 554 transaction failed; RFC 3463 §3.7 X.6.0
	// other media error), not as a message too big (552 5.3.4 would tell
	// the producer to send less, when the fix is a shorter header).
	errHeaderTooLarge = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf("Message cannot be parsed: no empty line ends the header section within its first %d bytes; keep the header section shorter (large content belongs in the body)", maxHeaderSection)}
	// errBadSender: a reverse-path with a control character, which RFC
	// 5321 §4.1.2 allows nowhere in a Mailbox (not even quoted): a syntax
	// error in MAIL's argument, 501 (§4.1.4), RFC 3463 X.1.7 bad sender's
	// mailbox address syntax. The address is not quoted back.
	errBadSender = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Sender address contains a control character"}
	errBadRcpt   = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: ReplyText(why)}
	}
	// errNonASCII: an address that is not ASCII, from a client that did
	// not ask for SMTPUTF8 (this server does not offer it): RFC 6531 §3.4
	// forbids sending one then, and §3.5 names 553 5.6.7 for it.
	errNonASCII = func(what, addr string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
			Message: ReplyText(fmt.Sprintf("%s %q is not ASCII, and this server does not offer SMTPUTF8", what, addr))}
	}
	// errLiteralRcpt: a recipient whose domain is an address literal,
	// "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3). Both are
	// refused alike, at RCPT: the relay sends only through Office 365,
	// which delivers to domain names, so such a message could only be
	// dead-lettered later. RFC 5321 §4.2.2 550 (not taken, for policy
	// reasons), RFC 3463 X.1.2 (bad destination system address: not
	// one that can accept mail from here). (Before, an IPv4 literal was
	// taken and an IPv6 one refused as "not an address".) A literal as
	// the envelope sender is taken: it only picks the account (none has
	// one), as any other address of no account does.
	errLiteralRcpt = func(addr string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 2},
			Message: ReplyText(fmt.Sprintf("recipient %q has an address literal for a domain (RFC 5321 §4.1.3): mail goes out through Office 365, which delivers only to domain names", addr))}
	}
	errNoAccount = func(why string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: ReplyText(why)}
	}
	// errNestedMail: a MAIL while a transaction is open. RFC 5321 §4.1.4:
	// MAIL "MUST NOT be sent if a mail transaction is already open", and
	// commands out of order get 503, the server staying in the same state
	// (RFC 3463 X.5.1 invalid command).
	errNestedMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Nested MAIL command: a transaction is open; finish it with DATA or end it with RSET"}
	// errNoRecipients: a message with no envelope recipient (RFC 5321
	// §3.3: "no valid recipients", 554 at DATA). The recipients of an SMTP
	// submission are the envelope's, never the message's header fields.
	errNoRecipients = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
)

// ReplyText keeps a reason to one reply line (RFC 5321 §4.2: a reply line
// ends at CRLF; the reason may quote the client's input), of about 400
// octets at most, cut where a UTF-8 sequence starts. relay sendmail -bs
// answers with it too.
func ReplyText(s string) string {
	return termsafe.Shorten(strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, s), 401)
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.sessions.Add(1)
	ss := &session{s: s, conn: c, remote: connlimit.RemoteIP(c.Conn().RemoteAddr()), client: connlimit.Client(c.Conn().RemoteAddr())}
	ss.log = s.log.With().Str("remote", ss.remote).Logger()
	return ss, nil
}

// session is one client connection after EHLO.
type session struct {
	s        *Server
	conn     *smtp.Conn
	remote   string // the client's address (logs, Received)
	client   string // what the lockout counts it as: connlimit.Client
	log      zerolog.Logger
	producer *Producer
	envFrom  string
	acct     *account.Account // picked at MAIL when the envelope sender decides
	rcpts    []string
	loggedIn bool
	revoked  bool // the producer changed after AUTH (stillValid)
	open     bool // a MAIL was accepted and its transaction not yet ended (Reset)

	dataMu   sync.Mutex
	dataDone chan struct{}  // closed when the latest Data returns (Reset)
	dataPipe *io.PipeReader // the latest Data's input when it came by BDAT
}

// AuthMechanisms are offered in EHLO only over TLS: none before, so
// EHLO has no AUTH then (go-smtp leaves it out when there is none).
func (ss *session) AuthMechanisms() []string {
	if !ss.encrypted() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// encrypted reports whether the session runs over TLS (after STARTTLS,
// which starts a new session, or on the implicit TLS listener).
func (ss *session) encrypted() bool {
	if ss.conn == nil {
		return false
	}
	_, ok := ss.conn.TLSConnectionState()
	return ok
}

// errEncryptionRequired: AUTH PLAIN or LOGIN before TLS, RFC 4954 §6
// (538 5.7.11: the mechanism may only be used over an encrypted
// connection). The password is not looked at.
var errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
	Message: "Encryption required for requested authentication mechanism: STARTTLS first"}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if (mech == sasl.Plain || mech == sasl.Login) && !ss.encrypted() {
		// Counted (reason cleartext): a client that sends its password
		// before TLS (PLAIN's initial response, RFC 4954 §4, may already
		// be on this line) is misconfigured, and its password may have
		// been seen on the wire. Not logged: a client repeating AUTH
		// would write a line each time, as fast as it sends.
		ss.s.metrics.authFailures.WithLabelValues("cleartext").Inc()
		return nil, errEncryptionRequired
	}
	switch mech {
	case sasl.Plain:
		return malformed{sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return smtp.ErrAuthFailed // acting for someone else is not offered
			}
			return ss.login(username, password)
		})}, nil
	case sasl.Login:
		return malformed{newLoginServer(ss.login)}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// malformed answers a response the mechanism cannot read (a PLAIN message
// without its two NULs) 501 5.5.2, a syntax error the client must fix, as
// RFC 4954 §4 answers one that is not base64: go-smtp would send any error
// that is not an SMTP reply as 454 4.7.0, a temporary failure (§6) that
// tells the client to try the same again later.
type malformed struct{ sasl.Server }

func (m malformed) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := m.Server.Next(response)
	var reply *smtp.SMTPError
	if err != nil && !errors.As(err, &reply) {
		err = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: ReplyText("Malformed AUTH response: " + err.Error())}
	}
	return challenge, done, err
}

// login checks a producer's name and password within the backoff rules
// (auth.go). The password is never logged.
func (ss *session) login(name, password string) error {
	s := ss.s
	// The name is the client's, as long as a command line (64 KiB). One
	// that cannot name a producer (ValidName, the registry's own rule:
	// at most 63 octets) is counted under one key for all such names and
	// logged shortened: kept whole, each guess kept up to 64 KiB in the
	// lockout (maxTracked keys of it) and wrote it into the log.
	keyName, logName := name, name
	if !ValidName(name) {
		keyName, logName = "\x00not-a-producer-name", termsafe.Shorten(name, 64)
	}
	keys := []string{"ip:" + ss.client, "name:" + keyName}
	if wait := s.lockout.locked(keys...); wait > 0 {
		s.metrics.authFailures.WithLabelValues("locked_out").Inc()
		// Refused without a hash, so as fast as the client sends: at
		// most one line per logEvery (the metric counts them all).
		if n, ok := s.lockedOut.take(s.deps.Clock.Now()); ok {
			ss.log.Warn().Str("producer", logName).Dur("locked_for_ms", wait).Int("not_logged_before", n).
				Msgf("SMTP AUTH refused: too many failures (at most one such line per %s)", logEvery)
		}
		return errLockedOut(wait)
	}
	p, ok, _ := s.producer(name) // a bucket that does not answer: as unknown
	// An unknown name is checked against a decoy hash, as slowly as a
	// wrong password (auth.go), and fails however the check goes.
	check := p
	if !ok {
		check = Producer{Hash: s.verify.decoy()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	good, _ := s.verify.check(ctx, check, password)
	cancel()
	good = good && ok
	if !good {
		s.lockout.fail(keys...)
		s.metrics.authFailures.WithLabelValues("bad_credentials").Inc()
		ss.log.Warn().Str("producer", logName).Msg("SMTP AUTH failed: unknown producer or wrong password")
		return smtp.ErrAuthFailed
	}
	s.lockout.succeed(keys...)
	loggedIn(ss.conn)
	ss.producer = &p
	ss.log = ss.log.With().Str("producer", p.Name).Logger()
	return nil
}

// producer looks name up in the front door's copy of the registry, and in
// the bucket when the copy does not have it: the watch may not have seen
// a producer added a moment ago. err is set only when the bucket did not
// answer; an unknown name is ok false.
func (s *Server) producer(name string) (p Producer, ok bool, err error) {
	if p, ok := s.prods.get(name); ok {
		return p, true, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	p, err = s.deps.Producers.Get(ctx, name)
	switch {
	case err == nil:
		return p, true, nil
	case errors.Is(err, ErrNoProducer):
		return Producer{}, false, nil
	}
	return Producer{}, false, err
}

// stillValid refuses a session whose producer was removed or replaced
// (relay producer remove, or add again: a new password or other accounts)
// after it authenticated. Removing a producer or giving it a new password
// is how an operator shuts out a leaked password, so a session may not go
// on sending on the credentials it logged in with for as long as its
// client holds the connection open. Every add writes a fresh salt, so the
// same hash is the same record. The reply is temporary, and every later
// command of the session gets it too (go-smtp allows one AUTH per
// connection): a client that knows the current password connects again.
func (ss *session) stillValid() error {
	if ss.revoked {
		return errCredentialsChanged
	}
	cur, ok, err := ss.s.producer(ss.producer.Name)
	if err != nil {
		return errQueueDown // NATS did not answer: nothing could be queued anyway
	}
	if ok && cur.Hash == ss.producer.Hash {
		return nil
	}
	ss.revoked = true
	ss.log.Warn().Int("smtp_code", 454).Msg("SMTP session refused: its producer was removed or replaced after it authenticated")
	return errCredentialsChanged
}

func (ss *session) producerLabel() string {
	if ss.producer == nil {
		return "none"
	}
	return ss.producer.Name
}

// Mail starts a transaction. A SIZE= over the server's limit never gets
// here: go-smtp answers it 552 5.3.4 itself (RFC 1870 §6.1). One over the
// account's own limit is refused here the same way: the account the
// envelope sender picks, or, while the From field is still to decide, the
// largest limit of the producer's accounts. A refused MAIL changes
// nothing: the server "MUST stay in the same state" (RFC 5321 §4.1.4), as
// go-smtp does, so a transaction open before keeps its sender, account and
// the recipients go-smtp still counts.
//
// A MAIL inside an open transaction is refused too (503, errNestedMail).
// go-smtp passes it on and, when it is accepted, keeps the recipients it
// counted before, while the session would start afresh: the message then
// went to the recipients given after the second MAIL only (those before
// had been answered 250 and were dropped), or, with none after it, to the
// addresses in the message's To, Cc and Bcc fields instead of the
// envelope's.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.producer == nil {
		return errAuthRequired
	}
	if err := ss.stillValid(); err != nil {
		return err
	}
	if strings.ContainsFunc(from, isControl) {
		return errBadSender
	}
	if !isASCII(from) {
		return errNonASCII("sender", from)
	}
	var acct *account.Account
	if from != "" { // the null sender: the From field decides
		a, err := ss.pick(from)
		if err != nil {
			ss.s.metrics.message(ss.producerLabel(), resultNotAllowed)
			return err
		}
		acct = a
	}
	if opts != nil && opts.Size > 0 {
		if alias, limit := ss.declaredLimit(acct); limit > 0 && opts.Size > limit {
			ss.s.metrics.message(ss.producerLabel(), resultTooLarge)
			ss.log.Info().Str("account", alias).Int64("size", opts.Size).Int64("limit", limit).Int("smtp_code", 552).Msg("SMTP MAIL refused: declared SIZE over the account's limit")
			return errTooLarge(fmt.Sprintf("declared size of %d bytes is over the size limit of %d bytes of account %s (max_message_bytes)", opts.Size, limit, alias))
		}
	}
	if ss.open {
		return errNestedMail
	}
	ss.envFrom, ss.acct, ss.rcpts, ss.open = from, acct, nil, true
	return nil
}

// declaredLimit is the size limit a SIZE= parameter is held to: that of
// acct, the account the envelope sender picked, else the largest of the
// producer's registered accounts (0 when none is registered: DATA
// answers that).
func (ss *session) declaredLimit(acct *account.Account) (alias string, limit int64) {
	if acct != nil {
		return acct.Alias, acct.SizeLimit()
	}
	for _, name := range ss.producer.Accounts {
		if a, ok := ss.s.accounts.get(name); ok && a.SizeLimit() > limit {
			alias, limit = a.Alias, a.SizeLimit()
		}
	}
	return alias, limit
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.producer == nil {
		return errAuthRequired
	}
	if !isASCII(to) {
		return errNonASCII("recipient", to)
	}
	if at := strings.LastIndexByte(to, '@'); at >= 0 && message.IsAddressLiteral(to[at+1:]) {
		return errLiteralRcpt(to)
	}
	a, err := message.ParseAddress("recipient", to)
	if err != nil {
		return errBadRcpt(err.Error())
	}
	if d := a.Address[strings.LastIndexByte(a.Address, '@')+1:]; !message.IsDomain(d) {
		return errBadRcpt(fmt.Sprintf("recipient %q: %q is not a domain (RFC 5321 §4.1.2: labels of letters, digits and inner hyphens)", to, d))
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

// Reset ends the transaction. With BDAT (RFC 3030) go-smtp runs Data in
// a goroutine of its own, and a RSET (or EHLO, STARTTLS) between chunks
// aborts it (§2: RSET clears the segments sent) while it may still be
// winding up: a large message removing what it stored of its body.
// go-smtp's goroutine then hands its result to whichever transaction is
// current when it ends, so the next transaction's BDAT LAST was answered
// with the aborted one's error, 554 5.0.0 "message transmission aborted"
// (permanent: the client bounced a valid message, which was not queued).
// Reset is called after go-smtp has cut the aborted Data's input off, so
// waiting for that Data to return here is short, and its result goes to
// its own transaction. It also keeps the aborted Data's reads of the
// envelope from racing with the next transaction's writes.
//
// go-smtp's goroutine hands the result over after Data returns, and then
// closes the pipe Data read from; so with BDAT, Reset also waits for that
// close (a pipe closed by its reader reads io.ErrClosedPipe, one closed
// only by its writer, go-smtp's reset, its writer's error).
func (ss *session) Reset() {
	ss.dataMu.Lock()
	done, pipe := ss.dataDone, ss.dataPipe
	ss.dataDone, ss.dataPipe = nil, nil
	ss.dataMu.Unlock()
	if done != nil {
		<-done
	}
	if pipe != nil {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			// go-smtp closed the writer before calling Reset, so this
			// read never blocks.
			if _, err := pipe.Read(nil); errors.Is(err, io.ErrClosedPipe) {
				break
			}
		}
	}
	ss.envFrom, ss.acct, ss.rcpts, ss.open = "", nil, nil, false
}

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
	_ = c.SetDeadline(refuseDeadline())
	s.answer421(c, reason)
}

// answer421 writes refuse's 421 and closes c, within the deadline its
// caller set.
func (s *Server) answer421(c net.Conn, reason string) {
	_, err := c.Write([]byte("421 4.7.0 " + reason + ", try again later\r\n"))
	reply := "421"
	if err != nil {
		reply = "none"
	}
	s.refused(reason, reply, err)
	_ = c.Close()
}

// refused counts a connection refused over a limit (reply "421", or
// "none": closed unanswered) and logs it, at most one line per
// logEvery: a flood of connections over the limit is what the
// limit is for, and a line for each was a flood of the log as well (the
// counter has every one).
func (s *Server) refused(reason, reply string, err error) {
	limit := "total"
	if reason == connlimit.ReasonPerIP {
		limit = "per_ip"
	}
	s.metrics.refusedConns.WithLabelValues(limit, reply).Inc()
	suppressed, ok := s.refusals.take(s.deps.Clock.Now())
	if !ok {
		return
	}
	ev := s.log.Warn().Str("reason", reason).Str("reply", reply).Int("not_logged_before", suppressed)
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msgf("SMTP connection refused (at most one such line per %s; relay_ingress_refused_connections_total counts them all)", logEvery)
}

// logEvery is the least time between two log lines of one kind that a
// client can cause as fast as it sends (logLimiter).
const logEvery = 10 * time.Second

// logLimiter rate-limits log lines of one kind to one per logEvery.
type logLimiter struct {
	mu         sync.Mutex
	next       time.Time // no line before it
	suppressed int       // refusals not logged since the last line
}

// take reports whether an event at now gets a log line, and how many
// were not logged since the last one.
func (r *logLimiter) take(now time.Time) (suppressed int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.next) {
		r.suppressed++
		return 0, false
	}
	suppressed, r.suppressed, r.next = r.suppressed, 0, now.Add(logEvery)
	return suppressed, true
}

// refuseTLS is refuse on the implicit TLS listener, where the client's
// first bytes are a TLS handshake and every reply comes inside TLS (RFC
// 8314 §3.3): a plaintext 421 there reached the client as "first record
// does not look like a TLS handshake", hiding the reason. The handshake
// and the reply share refuse's deadline, so a client that stalls costs
// no more than one that does not read.
func (s *Server) refuseTLS(c net.Conn, reason string) {
	_ = c.SetDeadline(refuseDeadline())
	tc := tls.Server(c, s.smtp.TLSConfig)
	if err := tc.Handshake(); err != nil {
		s.refused(reason, "none", fmt.Errorf("TLS handshake: %w", err))
		_ = c.Close()
		return
	}
	s.answer421(tc, reason) // within the handshake's deadline, not a new one
}

// refuseWithin bounds the time a refused connection is kept.
const refuseWithin = 2 * time.Second

// refuseWithinTest, when set, stands for refuseWithin: tests that keep
// refusals running.
var refuseWithinTest atomic.Int64

// refuseDeadline is when a refusal starting now gives up on its client.
func refuseDeadline() time.Time {
	d := refuseWithin
	if t := refuseWithinTest.Load(); t > 0 {
		d = time.Duration(t)
	}
	return time.Now().Add(d)
}

// isControl reports whether r is an ASCII control character (C0 or DEL).
func isControl(r rune) bool { return r < ' ' || r == 0x7f }

// isASCII reports whether s is 7-bit: an address without SMTPUTF8.
func isASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r > unicode.MaxASCII })
}

// loginListener gives each connection a time to authenticate in: the
// session timeout from its opening. Until AUTH succeeds no read deadline
// goes past it, so go-smtp, which moves the deadline at every command,
// answers the next read there with its idle timeout (421 4.4.2) and
// closes. Without it a client that never authenticates held a connection
// for as long as it sent a NOOP (or RSET, VRFY, EHLO) within each
// timeout, and a few such clients held every slot of the connection limit
// (connlimit), shutting producers out: the timeouts of RFC 5321
// §4.5.3.2 bound a wait for one command, not a session.
type loginListener struct {
	net.Listener
	window time.Duration
}

func (l loginListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &loginConn{Conn: c, by: time.Now().Add(l.window)}, nil
}

// loginConn is a connection that must authenticate by a time.
type loginConn struct {
	net.Conn
	by       time.Time
	loggedIn atomic.Bool
}

func (c *loginConn) SetReadDeadline(t time.Time) error {
	if !c.loggedIn.Load() && (t.IsZero() || t.After(c.by)) {
		t = c.by
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *loginConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// loggedIn lifts the login deadline of the connection under c (a
// loginConn, or TLS over one after STARTTLS or on the implicit TLS
// listener).
func loggedIn(c *smtp.Conn) {
	if c == nil {
		return
	}
	nc := c.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if lc, ok := nc.(*loginConn); ok {
		lc.loggedIn.Store(true)
	}
}
