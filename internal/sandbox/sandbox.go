// Package sandbox is `relay sandbox`: the whole relay on one machine with
// nothing to set up. It runs an embedded NATS JetStream server, the fake
// Office 365 (identity platform and SMTP), and the daemon, and connects an
// account named "sandbox" through the same consent code path authtool uses:
// authorization code with PKCE against the fake, which approves at once, a
// test mail, and only then the stored account and sealed tokens.
//
// Everything lives under the data directory: the JetStream store (so queued
// mail survives a restart), the token key, the fake's CA certificate and the
// captured mail as .eml files. The fake keeps its tokens in memory, so each
// start consents again; mail queued before a restart then flows.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/clock"
	"relay365/internal/consent"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/ingress"
	"relay365/internal/pacing"
	"relay365/internal/roles"
	"relay365/internal/token"
)

// The sandbox's one tenant, app and mailbox.
const (
	Account  = "sandbox"
	Mailbox  = "alerts@contoso.com"
	Tenant   = "contoso.onmicrosoft.com"
	ClientID = fakeo365.ClientID
)

// DefaultDataDir is where the sandbox keeps its store, key and mail.
var DefaultDataDir = filepath.Join(daemon.DefaultDataDir, "sandbox")

// The sandbox's SMTP front door, on by default, and its producer.
const (
	DefaultSMTPListen  = "127.0.0.1:2525"
	DefaultSMTPSListen = "127.0.0.1:2465"
	Producer           = "sandbox"
)

// Config is what `relay sandbox` takes.
type Config struct {
	DataDir    string // default DefaultDataDir
	NATSListen string // default queue.DefaultListen
	HTTPAddr   string // default daemon.DefaultHTTPAddr
	// SMTPListen and SMTPSListen are the SMTP front door's addresses
	// (STARTTLS and implicit TLS); "off" turns one off. Defaults
	// DefaultSMTPListen and DefaultSMTPSListen.
	SMTPListen, SMTPSListen string
	Out                     io.Writer // the banner; default io.Discard
	// Daemon overrides for tests (retry schedule, workers); DataDir,
	// KeyFile, NATS and HTTP fields are set by the sandbox.
	Daemon daemon.Config
	// Fake overrides for tests (limits, clock); Dir and MailDir are set.
	Fake fakeo365.Config
}

// Sandbox is a running sandbox.
type Sandbox struct {
	Fake   *fakeo365.Server
	Daemon *daemon.Daemon
	// SMTPPassword is the password of the producer "sandbox", made anew
	// at every start (empty when the SMTP front door is off).
	SMTPPassword string
	clock        clock.Clock
	fake         fakeo365.Config
	pacer        *pacing.Pacer // counts the consent test mails, as authtool does
}

// Start brings everything up and connects the sandbox account.
func Start(ctx context.Context, cfg Config, log zerolog.Logger) (_ *Sandbox, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	keyFile := filepath.Join(cfg.DataDir, "token.key")
	dc := cfg.Daemon
	dc.NATSURL = "" // the sandbox always embeds its server
	dc.NATSListen = cfg.NATSListen
	dc.DataDir = cfg.DataDir
	dc.KeyFile = keyFile
	dc.HTTPAddr = cfg.HTTPAddr
	dc.SMTP.Listen = onOff(cfg.SMTPListen, DefaultSMTPListen)
	dc.SMTP.ListenTLS = onOff(cfg.SMTPSListen, DefaultSMTPSListen)
	// A bad address stops the sandbox before the fake listens (exit 2).
	check := dc
	check.Defaults()
	if err := check.Validate(); err != nil {
		return nil, cli.UsageError{Err: err}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, cli.UsageError{Err: fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)}
	}
	if _, err := os.Stat(keyFile); errors.Is(err, fs.ErrNotExist) {
		if _, err := token.GenerateKeyFile(keyFile); err != nil {
			return nil, err
		}
	}
	s := &Sandbox{clock: cfg.Daemon.Clock, fake: cfg.Fake}
	if s.clock == nil {
		s.clock = clock.Real()
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	fc := cfg.Fake
	fc.Dir = filepath.Join(cfg.DataDir, "fake-office365")
	fc.MailDir = filepath.Join(cfg.DataDir, "mail")
	if fc.DefaultMailbox == "" {
		fc.DefaultMailbox = Mailbox
	}
	if fc.Now == nil {
		fc.Now = s.clock.Now // one clock for the fake and the token service
	}
	if err := os.MkdirAll(fc.Dir, 0o700); err != nil {
		return nil, err
	}
	if s.Fake, err = fakeo365.Start(fc); err != nil {
		return nil, fmt.Errorf("fake Office 365: %w", err)
	}

	dc.Extra = map[string]http.Handler{"GET /sandbox/messages": http.HandlerFunc(s.messages)}
	if s.Daemon, err = daemon.Start(ctx, dc, log); err != nil {
		return nil, err
	}
	if s.pacer, err = pacing.Open(ctx, s.Daemon.JS, s.clock); err != nil {
		s.Daemon.Close()
		return nil, err
	}
	if err := s.Connect(ctx); err != nil {
		return nil, fmt.Errorf("connecting the sandbox account: %w", err)
	}
	if err := s.Daemon.Engine.WaitBound(ctx, Account); err != nil {
		return nil, err
	}
	if s.Daemon.Producers != nil {
		s.SMTPPassword = ingress.NewPassword()
		if _, err := s.Daemon.Producers.Put(ctx, Producer, []string{Account}, s.SMTPPassword); err != nil {
			return nil, err
		}
	}
	log.Info().Str("account", Account).Str("mailbox", Mailbox).Msg("sandbox account connected through consent and a test mail")
	return s, nil
}

// Connect runs the real consent path against the fake: the "browser" is an
// HTTP client that follows the authorization URL to our redirect listener.
// Start does it once; calling it again is a re-consent (after a
// revocation), which workers pick up without a restart.
func (s *Sandbox) Connect(ctx context.Context) error {
	return s.ConnectMailbox(ctx, Account, Mailbox)
}

// ConnectMailbox connects another delegated account the way Connect does
// (the fake signs in whichever mailbox the login hint names).
func (s *Sandbox) ConnectMailbox(ctx context.Context, alias, mailbox string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return s.enroller().SignIn(ctx, s.account(alias, mailbox, false), consent.FollowURL(ctx))
}

// ConnectApp adds an app-only account (client credentials) sending as
// mailbox: it registers a confidential app with a fresh secret in the fake,
// takes a token, and enrolls the account with the secret sealed in its
// token record, as `authtool app` does.
func (s *Sandbox) ConnectApp(ctx context.Context, alias, mailbox string) error {
	acct := s.account(alias, mailbox, true)
	acct.ClientID = "app-" + alias
	secret := rand.Text()
	s.Fake.RegisterApp(acct.ClientID, secret)
	_, tokenURL, _ := acct.Endpoints()
	cc := clientcredentials.Config{ClientID: acct.ClientID, ClientSecret: secret, TokenURL: tokenURL, Scopes: acct.Scopes, AuthStyle: oauth2.AuthStyleInParams}
	tok, err := cc.Token(ctx)
	if err != nil {
		return err
	}
	return s.enroller().Enroll(ctx, acct, tok, secret, "")
}

// onOff is v, def when v is empty, or "" (off) when v is "off".
func onOff(v, def string) string {
	switch v {
	case "":
		return def
	case "off":
		return ""
	}
	return v
}

func (s *Sandbox) account(alias, mailbox string, appOnly bool) account.Account {
	acct := s.Fake.Account(alias, mailbox, Tenant)
	acct.AppOnly = appOnly
	acct.PerMinute, acct.PerDay, acct.MaxConns = s.fake.PerMinute, s.fake.PerDay, s.fake.MaxConns
	// The account's limits are the fake's, so the relay paces exactly as
	// it would for Office 365; a limit the fake switched off (negative)
	// is as good as none.
	for _, n := range []*int{&acct.PerMinute, &acct.PerDay} {
		if *n < 0 {
			*n = 1 << 20
		}
	}
	if acct.MaxConns < 0 {
		acct.MaxConns = 10
	}
	acct.Normalize()
	return acct
}

func (s *Sandbox) enroller() consent.Enroller {
	return consent.Enroller{
		Accounts: s.Daemon.Accounts, Store: s.Daemon.Store, Now: s.clock.Now, Pacing: s.pacer,
	}
}

// Captured is one message on GET /sandbox/messages.
type Captured struct {
	From    string    `json:"from"`
	To      []string  `json:"to"`
	Subject string    `json:"subject"`
	Size    int       `json:"size"`
	Time    time.Time `json:"time"`
}

func (s *Sandbox) messages(w http.ResponseWriter, r *http.Request) {
	msgs := s.Fake.Messages()
	out := make([]Captured, len(msgs))
	for i, m := range msgs {
		out[i] = Captured{From: m.HeaderFrom, To: m.To, Subject: m.Subject, Size: len(m.Data), Time: m.Time}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

// Close stops the daemon, then the fake.
func (s *Sandbox) Close() error {
	var err error
	if s.Daemon != nil {
		err = s.Daemon.Close()
	}
	if s.Fake != nil {
		err = errors.Join(err, s.Fake.Close())
	}
	return err
}

// Banner is what a person reads after start: what runs where, and the
// commands that send a first message.
func (s *Sandbox) Banner(dataDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
Relay365 sandbox is running.

  NATS JetStream   %s  (embedded, store in %s)
  fake Office 365  SMTP %s, identity %s
  account          %q = %s (consented, test mail accepted)
  HTTP             http://%s/metrics  /status  /sandbox/messages
  captured mail    %s
`, s.Daemon.NATSURL, filepath.Join(dataDir, "jetstream"), s.Fake.SMTPAddr(), s.Fake.AuthorityURL(),
		Account, Mailbox, s.Daemon.HTTPAddr, filepath.Join(dataDir, "mail"))
	if s.Daemon.Ingress != nil {
		fmt.Fprintf(&b, "  SMTP submission  %s, user %q, password %s\n                   (CA file %s)\n",
			s.smtpListeners(), Producer, s.SMTPPassword, s.Daemon.SMTPCAFile)
	}
	fmt.Fprintf(&b, `
Send a message from a second terminal:

  go run ./cmd/relay publish --nats-url %s --nats-nkey %s \
    --account %s --to ops@contoso.com --subject "CPU high on web-3" --text "load 17.2"
`, s.Daemon.NATSURL, roles.SeedFile(dataDir, roles.Producer), Account)
	if s.Daemon.Ingress != nil && s.Daemon.Ingress.Addr() != nil {
		fmt.Fprintf(&b, `
or over SMTP, as Alertmanager or Grafana would (any client with STARTTLS and AUTH PLAIN):

  swaks --server %s --tls --tls-verify --tls-ca-path %s --auth PLAIN --auth-user %s --auth-password %s --from alertmanager@example.org --to ops@contoso.com
`, s.Daemon.Ingress.Addr(), s.Daemon.SMTPCAFile, Producer, s.SMTPPassword)
	}
	fmt.Fprintf(&b, `
then see it arrive:

  curl -s http://%s/sandbox/messages

and what could not be sent (the admin seed is in the sandbox's data directory):

  go run ./cmd/relay dlq list --nats-url %s --data-dir %s

Ctrl-C stops; queued messages are kept for the next start.
`, s.Daemon.HTTPAddr, s.Daemon.NATSURL, dataDir)
	return b.String()
}

// smtpListeners says where the SMTP front door listens.
func (s *Sandbox) smtpListeners() string {
	var parts []string
	if a := s.Daemon.Ingress.Addr(); a != nil {
		parts = append(parts, a.String()+" (STARTTLS)")
	}
	if a := s.Daemon.Ingress.TLSAddr(); a != nil {
		parts = append(parts, a.String()+" (implicit TLS)")
	}
	return strings.Join(parts, ", ")
}

// Run is `relay sandbox`: start, print the banner, wait for ctx, stop.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	s, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	dataDir := cfg.DataDir
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	fmt.Fprint(cfg.Out, s.Banner(dataDir))
	<-ctx.Done()
	log.Info().Msg("sandbox shutting down")
	return s.Close()
}
