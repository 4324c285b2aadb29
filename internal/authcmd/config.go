package authcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/token"
)

// adminConfig is what list, test, remove and rotate-key share.
type adminConfig struct {
	store storeConfig
	alias string
	json  bool
}

// newAdminFlags registers the shared flags; withAccount adds --account,
// which parse then requires.
func newAdminFlags(name string, env Env, withAccount bool) (*flag.FlagSet, *adminConfig) {
	fs := cli.NewFlags("authtool "+name, env.Stderr)
	c := &adminConfig{}
	c.store.register(fs, env)
	if withAccount {
		fs.StringVar(&c.alias, "account", "", "account alias; required")
	}
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
	return fs, c
}

func (c *adminConfig) parse(fs *flag.FlagSet, args []string) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if err := c.store.NATS.Validate(); err != nil {
		return cli.UsageError{Err: err}
	}
	if fs.Lookup("account") == nil {
		return nil
	}
	if err := account.ValidateAlias(c.alias); err != nil {
		return cli.UsageError{Err: fmt.Errorf("--account: %w", err)}
	}
	return nil
}

// storeConfig is where the accounts and tokens live.
type storeConfig struct {
	NATSURL string
	NATS    queue.ConnectOptions
	DataDir string // the relay's: its nkeys/admin.nk is used when no credentials are named
	KeyFile string
}

func (c *storeConfig) register(fs *flag.FlagSet, env Env) {
	fs.StringVar(&c.NATSURL, "nats-url", cli.EnvOr(env.Env, "RELAY_NATS_URL", queue.DefaultURL), "NATS server of the relay (env RELAY_NATS_URL)")
	c.NATS.Register(fs, env.Getenv)
	fs.StringVar(&c.DataDir, "data-dir", cli.EnvOr(env.Env, "RELAY_DATA_DIR", cli.DefaultDataDir), "the relay's data directory: its nkeys/admin.nk is used when no NATS credentials are given (env RELAY_DATA_DIR)")
	fs.StringVar(&c.KeyFile, "key-file", env.Getenv("RELAY_TOKEN_KEY_FILE"), "the relay's token sealing key file (env RELAY_TOKEN_KEY_FILE)")
}

// keyring loads the sealing key; a missing or bad key file is a
// configuration error (exit 2), found before anyone signs in.
func (c storeConfig) keyring() (*token.Keyring, error) {
	keys, err := token.LoadKeyring(c.KeyFile)
	if err != nil {
		return nil, cli.UsageError{Err: fmt.Errorf("%w (use the same key file as relay serve: --key-file or RELAY_TOKEN_KEY_FILE)", err)}
	}
	return keys, nil
}

// stores is an open connection to the relay's buckets.
type stores struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	accounts *account.Registry
	tokens   *token.Store  // nil when opened without a key ring
	pacer    *pacing.Pacer // counts test mails in the mailbox's budget
}

// open connects to NATS and opens the account registry and, with keys,
// the sealed token store. Both buckets are created if the relay has not
// run yet.
func (c storeConfig) open(ctx context.Context, keys *token.Keyring) (*stores, error) {
	nc, err := roles.Connect(c.NATSURL, "relay365-authtool", c.NATS, c.DataDir, roles.Admin)
	if err != nil {
		return nil, err
	}
	s := &stores{nc: nc}
	if s.js, err = jetstream.New(nc); err != nil {
		s.close()
		return nil, err
	}
	if s.accounts, err = account.OpenRegistry(ctx, s.js); err != nil {
		s.close()
		return nil, err
	}
	if s.pacer, err = pacing.Open(ctx, s.js, nil); err != nil {
		s.close()
		return nil, err
	}
	if keys != nil {
		if s.tokens, err = token.OpenStore(ctx, s.js, keys); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

func (s *stores) close() {
	_ = s.nc.Drain()
	s.nc.Close()
}

// enrollConfig is everything login, app and import need to define an
// account and prove it.
type enrollConfig struct {
	store   storeConfig
	acct    account.Account
	scopes  string
	sendAs  cli.ListFlag
	maxSize cli.ByteSize
	testTo  string
	timeout time.Duration
	json    bool

	// set names the flags given on the command line: connecting an
	// existing account again keeps its settings but for these (keep).
	set map[string]bool
	// needAccount: --mailbox, --tenant or --client-id is missing, which
	// only an existing account of the alias can fill in.
	needAccount bool
}

// requiredFlags are the account flags a new account cannot do without;
// connecting an existing one again takes them from its record.
var requiredFlags = []string{"mailbox", "tenant", "client-id"}

// register binds the account flags. endpoints lists the endpoint override
// flags that apply to the command (auth, token, device).
func (c *enrollConfig) register(fs *flag.FlagSet, env Env, timeout time.Duration, endpoints ...string) {
	c.store.register(fs, env)
	a := &c.acct
	fs.StringVar(&a.Alias, "account", "", "account alias: the name producers publish to (mail.send.<alias>); required")
	fs.StringVar(&a.Mailbox, "mailbox", "", "the mailbox to send as, e.g. alerts@contoso.com; required for a new account")
	fs.StringVar(&a.Tenant, "tenant", "", "Entra tenant ID (GUID) or verified domain, e.g. contoso.onmicrosoft.com; required for a new account")
	fs.StringVar(&a.ClientID, "client-id", "", "application (client) ID of the app registration; required for a new account")
	fs.StringVar(&a.Authority, "authority", account.DefaultAuthority, "identity platform; endpoints derive from it and the tenant the Entra way")
	for _, ep := range endpoints {
		switch ep {
		case "auth":
			fs.StringVar(&a.AuthURL, "auth-url", "", "authorization endpoint (default: derived from --authority and --tenant)")
		case "token":
			fs.StringVar(&a.TokenURL, "token-url", "", "token endpoint (default: derived from --authority and --tenant)")
		case "device":
			fs.StringVar(&a.DeviceURL, "device-url", "", "device authorization endpoint (default: derived from --authority and --tenant)")
		}
	}
	fs.StringVar(&c.scopes, "scopes", "", "scopes, space or comma separated (default: "+strings.Join(account.DefaultDelegatedScopes(), " ")+
		"; app: "+account.ScopeAppOnly+")")
	fs.StringVar(&a.SMTPAddr, "smtp", account.DefaultSMTPAddr, "SMTP submission endpoint host:port")
	fs.StringVar(&a.CAFile, "ca-file", "", "extra PEM CA bundle for the SMTP server's certificate (private TLS roots)")
	fs.StringVar(&a.ProxyURL, "proxy", "", "HTTP(S) or SOCKS5 proxy for the identity platform (default: HTTPS_PROXY)")
	fs.StringVar((*string)(&a.FromPolicy), "from-policy", string(message.PolicyRewrite), "From handling: rewrite (send as the mailbox, original to Reply-To), allow (--send-as list) or reject")
	fs.Var(&c.sendAs, "send-as", "From address the mailbox may send as under --from-policy allow (repeatable)")
	fs.IntVar(&a.PerMinute, "per-minute", account.DefaultPerMinute, "messages per minute for this mailbox (Office 365: 30)")
	fs.IntVar(&a.PerDay, "per-day", account.DefaultPerDay, "recipients per 24 hours for this mailbox (Office 365: 10000)")
	fs.IntVar(&a.MaxConns, "max-conns", account.DefaultMaxConns, "concurrent SMTP connections for this mailbox (Office 365: 3)")
	c.maxSize = message.MaxSize
	fs.Var(&c.maxSize, "max-message-size", "largest message this mailbox may send, counted after encoding: bytes, KB or MB (1024-based; Office 365: 35MB, or the mailbox's MaxSendSize if lower); producers are refused above it")
	fs.StringVar(&c.testTo, "test-to", "", "where the test mail goes (default: the mailbox itself)")
	fs.DurationVar(&c.timeout, "timeout", timeout, "give up after this long")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
}

// parse parses args, then fills defaults and checks everything that can be
// checked before anyone signs in; every problem is a usage error.
func (c *enrollConfig) parse(fs *flag.FlagSet, args []string, appOnly bool) error {
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	c.set = make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { c.set[f.Name] = true })
	return c.validate(appOnly)
}

// keep makes c connect old again: every account setting whose flag was
// not given is old's (proxyURL: the proxy as sealed with old's tokens,
// credentials included, "" to use old's record), and the result is
// validated again. An account of the other kind (app-only or delegated)
// is replaced, not kept: its settings do not fit.
func (c *enrollConfig) keep(old account.Account, proxyURL string) error {
	a := &c.acct
	if old.AppOnly != a.AppOnly {
		if c.needAccount {
			kind := "a delegated"
			if old.AppOnly {
				kind = "an app-only"
			}
			return cli.Usagef("account %s is %s account: to replace it, give --mailbox, --tenant and --client-id", a.Alias, kind)
		}
		return nil
	}
	if proxyURL == "" {
		proxyURL = old.ProxyURL
	}
	for name, keep := range map[string]func(){
		"mailbox":          func() { a.Mailbox = old.Mailbox },
		"tenant":           func() { a.Tenant = old.Tenant },
		"client-id":        func() { a.ClientID = old.ClientID },
		"authority":        func() { a.Authority = old.Authority },
		"auth-url":         func() { a.AuthURL = old.AuthURL },
		"token-url":        func() { a.TokenURL = old.TokenURL },
		"device-url":       func() { a.DeviceURL = old.DeviceURL },
		"scopes":           func() { a.Scopes = old.Scopes },
		"smtp":             func() { a.SMTPAddr = old.SMTPAddr },
		"ca-file":          func() { a.CAFile = old.CAFile },
		"proxy":            func() { a.ProxyURL = proxyURL },
		"from-policy":      func() { a.FromPolicy = old.FromPolicy },
		"send-as":          func() { a.SendAs = old.SendAs },
		"per-minute":       func() { a.PerMinute = old.PerMinute },
		"per-day":          func() { a.PerDay = old.PerDay },
		"max-conns":        func() { a.MaxConns = old.MaxConns },
		"max-message-size": func() { a.MaxMessageBytes = old.MaxMessageBytes },
	} {
		if !c.set[name] {
			keep()
		}
	}
	c.needAccount = false
	a.Normalize()
	if err := a.Validate(); err != nil {
		return cli.UsageError{Err: fmt.Errorf("connecting account %s again with its settings and the flags given: %w", a.Alias, err)}
	}
	return nil
}

func (c *enrollConfig) validate(appOnly bool) error {
	a := &c.acct
	a.AppOnly = appOnly
	a.Scopes = strings.FieldsFunc(c.scopes, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' })
	a.SendAs = c.sendAs
	var errs []error
	if c.maxSize < 1 || c.maxSize > message.MaxSize {
		errs = append(errs, fmt.Errorf("--max-message-size %s: want 1 byte to 35MB (Office 365's limit; a mailbox's MaxSendSize may be lower)", c.maxSize.String()))
	} else {
		a.MaxMessageBytes = int64(c.maxSize)
	}
	// In the account record 0 is "unset" and Normalize makes it the
	// default: given on the command line it would connect the mailbox at
	// Office 365's pace without a word about the 0.
	for _, f := range []struct {
		name   string
		v, def int
	}{{"per-minute", a.PerMinute, account.DefaultPerMinute}, {"per-day", a.PerDay, account.DefaultPerDay}, {"max-conns", a.MaxConns, account.DefaultMaxConns}} {
		if c.set[f.name] && f.v == 0 {
			errs = append(errs, fmt.Errorf("--%s 0: want at least 1 (Office 365's: %d)", f.name, f.def))
		}
	}
	a.Normalize()
	// Without --mailbox, --tenant or --client-id only an existing account
	// can be meant (enroll checks): the flags given are checked now, with
	// stand-ins for the missing ones.
	check := *a
	for _, name := range requiredFlags {
		if c.set[name] {
			continue
		}
		c.needAccount = true
		switch name {
		case "mailbox":
			check.Mailbox = "mailbox@example.invalid"
		case "tenant":
			check.Tenant = "00000000-0000-0000-0000-000000000000"
		case "client-id":
			check.ClientID = "00000000-0000-0000-0000-000000000000"
		}
	}
	if err := check.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.store.NATS.Validate(); err != nil {
		errs = append(errs, err) // before anyone signs in
	}
	if a.CAFile != "" {
		abs, err := filepath.Abs(a.CAFile)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--ca-file: %v", err))
		}
		a.CAFile = abs // the relay reads it too, from its own working directory
	}
	if c.testTo != "" {
		// The test mail's checks, now: found after the sign-in, a bad
		// address would throw the person's consent away.
		if _, err := message.ParseAddress("to", c.testTo); err != nil {
			errs = append(errs, fmt.Errorf("--test-to %q: want one deliverable e-mail address", c.testTo))
		}
	}
	if c.timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout %s: want a positive duration", c.timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return cli.UsageError{Err: err}
	}
	return nil
}

// httpClient is the client for identity platform calls: the account's
// proxy, else HTTPS_PROXY.
func (c *enrollConfig) httpClient() (*http.Client, error) {
	hc, err := token.NewHTTPClient(c.acct.ProxyURL)
	if err != nil {
		return nil, cli.UsageError{Err: fmt.Errorf("--proxy: %w", err)}
	}
	return hc, nil
}

// secretFlags read a secret from a file or an environment variable, never
// from a flag value (shell history, ps).
type secretFlags struct {
	required                 bool
	name, what, file, envVar string
}

func (s *secretFlags) register(fs *flag.FlagSet, name, what string) {
	s.name, s.what = name, what
	if s.required {
		what += " (required)"
	}
	fs.StringVar(&s.file, name+"-file", "", "read the "+what+" from this file (- for stdin)")
	fs.StringVar(&s.envVar, name+"-env", "", "read the "+what+" from this environment variable")
}

// read returns the secret; "" when neither source is given and the secret
// is optional.
func (s secretFlags) read(env Env) (string, error) {
	var v string
	switch {
	case s.file == "" && s.envVar == "" && s.required:
		return "", cli.Usagef("the %s is required: --%s-file FILE (- for stdin) or --%s-env VAR (never a flag value)", s.what, s.name, s.name)
	case s.file != "" && s.envVar != "":
		return "", cli.Usagef("give the %s either as a file or as an environment variable, not both", s.what)
	case s.file == "-":
		b, err := io.ReadAll(io.LimitReader(env.Stdin, 64<<10))
		if err != nil {
			return "", cli.Usagef("reading the %s from stdin: %v", s.what, err)
		}
		v = string(b)
	case s.file != "":
		b, err := os.ReadFile(s.file)
		if err != nil {
			return "", cli.Usagef("reading the %s: %v", s.what, err)
		}
		v = string(b)
	case s.envVar != "":
		v = env.Getenv(s.envVar)
		if v == "" {
			return "", cli.Usagef("environment variable %s (the %s) is empty or unset", s.envVar, s.what)
		}
	default:
		return "", nil
	}
	v = strings.TrimSpace(v)
	if v == "" {
		return "", cli.Usagef("the %s is empty", s.what)
	}
	return v, nil
}
