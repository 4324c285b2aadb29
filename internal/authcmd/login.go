package authcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/consent"
	"relay365/internal/token"
)

// Sign-in flows of login.
const (
	flowBrowser = "browser"
	flowDevice  = "device"
)

type loginConfig struct {
	enrollConfig
	flow         string
	redirectPort int
	noBrowser    bool
	secret       secretFlags
}

func runLogin(ctx context.Context, args []string, env Env) error {
	fs := cli.NewFlags("authtool login", env.Stderr)
	var c loginConfig
	c.register(fs, env, 10*time.Minute, "auth", "token", "device")
	fs.StringVar(&c.flow, "flow", flowBrowser, "sign-in flow: browser (authorization code + PKCE, redirect to http://127.0.0.1) or device (code to enter on another device)")
	fs.IntVar(&c.redirectPort, "redirect-port", 0, "browser flow: port of the http://127.0.0.1 redirect (default: a free port)")
	fs.BoolVar(&c.noBrowser, "no-browser", false, "browser flow: print the sign-in URL but do not open a browser")
	c.secret.register(fs, "client-secret", "client secret (only for an app registration that is a confidential client)")
	if err := c.parse(fs, args, false); err != nil {
		return err
	}
	switch {
	case c.flow != flowBrowser && c.flow != flowDevice:
		return cli.Usagef("--flow %q: want browser or device", c.flow)
	case c.redirectPort < 0 || c.redirectPort > 65535:
		return cli.Usagef("--redirect-port %d: want 1-65535, or 0 for a free port", c.redirectPort)
	case c.flow == flowDevice && c.set["redirect-port"]:
		// The device flow has no redirect: the person meant one flow or
		// the other (--no-browser is true of both and passes).
		return cli.Usagef("--redirect-port is for --flow browser; --flow device has no redirect")
	}
	secret, err := c.secret.read(env)
	if err != nil {
		return err
	}
	return enroll(ctx, env, &c.enrollConfig, c.flow, secret, func(ctx context.Context, hc *http.Client) (*oauth2.Token, error) {
		if c.flow == flowDevice {
			return deviceSignIn(ctx, env, c, secret, hc)
		}
		return browserSignIn(ctx, env, c, secret, hc)
	})
}

func runApp(ctx context.Context, args []string, env Env) error {
	fs := cli.NewFlags("authtool app", env.Stderr)
	var c enrollConfig
	secret := secretFlags{required: true}
	c.register(fs, env, time.Minute, "token")
	secret.register(fs, "client-secret", "client secret of the app registration")
	if err := c.parse(fs, args, true); err != nil {
		return err
	}
	s, err := secret.read(env)
	if err != nil {
		return err
	}
	return enroll(ctx, env, &c, "client_credentials", s, func(ctx context.Context, hc *http.Client) (*oauth2.Token, error) {
		fmt.Fprintf(env.Stderr, "Requesting an app-only token for %s with client credentials...\n", c.acct.ClientID)
		return consent.AppToken(ctx, hc, c.acct, s)
	})
}

func runImport(ctx context.Context, args []string, env Env) error {
	fs := cli.NewFlags("authtool import", env.Stderr)
	var c enrollConfig
	var secret secretFlags
	rt := secretFlags{required: true}
	c.register(fs, env, time.Minute, "token")
	rt.register(fs, "refresh-token", "refresh token to import")
	secret.register(fs, "client-secret", "client secret (only for an app registration that is a confidential client)")
	if err := c.parse(fs, args, false); err != nil {
		return err
	}
	refresh, err := rt.read(env)
	if err != nil {
		return err
	}
	s, err := secret.read(env)
	if err != nil {
		return err
	}
	return enroll(ctx, env, &c, "import", s, func(ctx context.Context, hc *http.Client) (*oauth2.Token, error) {
		fmt.Fprintln(env.Stderr, "Redeeming the refresh token once to prove it...")
		return consent.Refresh(ctx, hc, c.acct, refresh, s)
	})
}

// enrollResult is what login, app and import print on success.
type enrollResult struct {
	Account     string    `json:"account"`
	Mailbox     string    `json:"mailbox"`
	Tenant      string    `json:"tenant"`
	AppOnly     bool      `json:"app_only"`
	Flow        string    `json:"flow"`
	TestTo      string    `json:"test_to"`
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	Replaced    bool      `json:"replaced"`
	// MaxMessageBytes is the account's size limit (--max-message-size).
	MaxMessageBytes int64 `json:"max_message_bytes"`
}

// enroll is the part login, app and import share: key and NATS first (so a
// misconfiguration shows before anyone signs in), then getToken, then the
// test mail and the all-or-nothing store. Any failure before the store
// leaves nothing behind and says so.
func enroll(ctx context.Context, env Env, c *enrollConfig, flow, secret string, getToken func(context.Context, *http.Client) (*oauth2.Token, error)) error {
	keys, err := c.store.keyring()
	if err != nil {
		return err
	}
	if _, err := c.httpClient(); err != nil {
		return err // a bad --proxy is a usage error before NATS
	}
	st, err := c.store.open(ctx, keys)
	if err != nil {
		return err
	}
	defer st.close()
	old, err := st.accounts.Get(ctx, c.acct.Alias)
	replaced := err == nil
	switch {
	case replaced:
		// Connecting an account again (the remedy of needs_consent is
		// "authtool login --account A") keeps what the flags do not
		// change; the proxy as sealed, with its credentials.
		var proxyURL string
		if !c.set["proxy"] {
			if rec, _, err := st.tokens.Get(ctx, old.Alias); err == nil {
				proxyURL = rec.ProxyURL
			}
		}
		if err := c.keep(old, proxyURL); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "Account %s exists: its settings are kept except for the flags given; it is replaced only if the new test mail is accepted.\n", c.acct.Alias)
	case !errors.Is(err, account.ErrNotFound):
		return err
	case c.needAccount:
		return cli.Usagef("account %s does not exist: --mailbox, --tenant and --client-id are required to connect it", c.acct.Alias)
	}
	hc, err := c.httpClient()
	if err != nil {
		return err
	}
	a := c.acct

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	tok, err := getToken(ctx, hc)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			err = fmt.Errorf("gave up after --timeout %s (run the command again, with a longer --timeout if the sign-in needs it): %w", c.timeout, err)
		}
		return nothingStored(err, a)
	}
	testTo := c.testTo
	if testTo == "" {
		testTo = a.Mailbox
	}
	fmt.Fprintf(env.Stderr, "Token received. Sending a test mail as %s to %s through %s...\n", a.Mailbox, testTo, a.SMTPAddr)
	en := consent.Enroller{Accounts: st.accounts, Store: st.tokens, Pacing: st.pacer}
	if err := en.Enroll(ctx, a, tok, secret, testTo); err != nil {
		var tm *consent.TestMailError
		var wm *consent.WrongMailboxError
		if errors.As(err, &tm) || errors.As(err, &wm) || ctx.Err() != nil {
			return nothingStored(err, a)
		}
		return err // Enroll says exactly what was stored
	}
	res := enrollResult{Account: a.Alias, Mailbox: a.Mailbox, Tenant: a.Tenant, AppOnly: a.AppOnly, Flow: flow,
		TestTo: testTo, TokenExpiry: tok.Expiry, Replaced: replaced, MaxMessageBytes: a.SizeLimit()}
	if c.json {
		return json.NewEncoder(env.Stdout).Encode(res)
	}
	kind := "delegated"
	if a.AppOnly {
		kind = "app-only"
	}
	limit := cli.ByteSize(a.SizeLimit())
	fmt.Fprintf(env.Stdout, "connected: account %s sends as %s (%s, %s; messages up to %s); test mail to %s accepted; account and sealed tokens stored\n",
		a.Alias, a.Mailbox, kind, flow, limit.String(), testTo)
	fmt.Fprintf(env.Stderr, "A running relay uses it now. Try: relay publish --account %s --to %s --subject test --text hello\n", a.Alias, testTo)
	return nil
}

// nothingStored adds what a failed enrolment left behind (nothing) and
// writes identity remedies for this account.
func nothingStored(err error, a account.Account) error {
	var ie *token.IdentityError
	if errors.As(err, &ie) {
		// A wrapping fmt.Errorf has already formatted ie: reword it there.
		before := ie.Error()
		ie.ForAccount(a.Alias, a.AppOnly)
		if ie.Temporary() {
			// The token service's remedy ("retrying with backoff") is not
			// true here: authtool gives up and nothing is left to retry.
			ie.Remedy = "a temporary failure of the identity platform; nothing is retried: run the command again"
			if ie.RetryAfter > 0 {
				ie.Remedy += " in " + ie.RetryAfter.Round(time.Second).String() + " or later"
			}
		}
		err = reworded{msg: strings.Replace(err.Error(), before, ie.Error(), 1), err: err}
	}
	return fmt.Errorf("%w\nnothing was stored", err)
}

// reworded is err with its message rewritten.
type reworded struct {
	msg string
	err error
}

func (r reworded) Error() string { return r.msg }
func (r reworded) Unwrap() error { return r.err }

// browserSignIn runs the authorization code flow with PKCE: print the URL,
// open a browser unless told not to, count down while waiting.
func browserSignIn(ctx context.Context, env Env, c loginConfig, secret string, hc *http.Client) (*oauth2.Token, error) {
	a := c.acct
	authURL, tokenURL, _ := a.Endpoints()
	var wait waiting
	defer wait.done()
	return consent.Browser{
		ClientID: a.ClientID, ClientSecret: secret, AuthURL: authURL, TokenURL: tokenURL, Scopes: a.Scopes, LoginHint: a.Mailbox,
		RedirectPort: c.redirectPort, HTTPClient: hc,
	}.Run(ctx, func(u string) error {
		fmt.Fprintf(env.Stderr, "Sign in as %s to connect account %q; open this URL in a browser on this machine:\n\n  %s\n\n", a.Mailbox, a.Alias, u)
		if c.noBrowser {
			fmt.Fprintf(env.Stderr, "(--no-browser. Over SSH, forward the redirect port first: ssh -L %s:127.0.0.1:%s <this host>; or use --flow device.)\n",
				redirectPort(u), redirectPort(u))
		} else if err := openBrowser(env, u); err != nil {
			fmt.Fprintf(env.Stderr, "Could not open a browser (%v): open the URL above yourself.\n", err)
		}
		deadline, _ := ctx.Deadline()
		wait.start(ctx, env.Stderr, "the sign-in", deadline)
		return nil
	})
}

// redirectPort is the port of the redirect_uri inside an authorization URL.
func redirectPort(authURL string) string {
	u, err := url.Parse(authURL)
	if err != nil {
		return "PORT"
	}
	r, err := url.Parse(u.Query().Get("redirect_uri"))
	if err != nil {
		return "PORT"
	}
	if _, port, err := net.SplitHostPort(r.Host); err == nil {
		return port
	}
	return "PORT"
}

// deviceSignIn runs the device code flow: show the code as Microsoft
// words it, count down to its expiry while polling.
func deviceSignIn(ctx context.Context, env Env, c loginConfig, secret string, hc *http.Client) (*oauth2.Token, error) {
	a := c.acct
	_, tokenURL, deviceURL := a.Endpoints()
	var wait waiting
	defer wait.done()
	return consent.Device{
		ClientID: a.ClientID, ClientSecret: secret, DeviceURL: deviceURL, TokenURL: tokenURL, Scopes: a.Scopes, HTTPClient: hc,
		Interval: env.DevicePoll,
	}.Run(ctx, func(dc consent.DeviceCode) error {
		fmt.Fprintf(env.Stderr, "%s\nSign in as %s to connect account %q.\n", dc.Message(), a.Mailbox, a.Alias)
		if dc.VerificationURIComplete != "" {
			fmt.Fprintf(env.Stderr, "Or open %s (the code is filled in).\n", dc.VerificationURIComplete)
		}
		deadline := dc.Expires
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		wait.start(ctx, env.Stderr, "the sign-in with code "+dc.UserCode, deadline)
		return nil
	})
}
