package queue

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// ConnectOptions is how a Relay365 process proves itself to a NATS server
// it does not run: one of user/password, token, nkey seed or credentials
// file, and optionally TLS with a private CA and a client certificate. Every
// command that connects (relay serve, publish, dlq; authtool) binds the same
// flags with Register, so the spelling and the environment variables are
// the same everywhere.
//
// Secrets are never flag values (shell history, ps): the password and the
// token come from a file or an environment variable; nkeys and credentials
// are files by nature.
type ConnectOptions struct {
	User         string // --nats-user, RELAY_NATS_USER
	Password     string // RELAY_NATS_PASSWORD (environment only)
	PasswordFile string // --nats-password-file, RELAY_NATS_PASSWORD_FILE
	Token        string // RELAY_NATS_TOKEN (environment only)
	TokenFile    string // --nats-token-file, RELAY_NATS_TOKEN_FILE
	NKeyFile     string // --nats-nkey, RELAY_NATS_NKEY: a file holding an nkey user seed (SU...)
	CredsFile    string // --nats-creds, RELAY_NATS_CREDS: a .creds file (user JWT and seed)
	TLSCA        string // --nats-tls-ca, RELAY_NATS_TLS_CA: PEM roots that verify the server
	TLSCert      string // --nats-tls-cert, RELAY_NATS_TLS_CERT: client certificate (PEM)
	TLSKey       string // --nats-tls-key, RELAY_NATS_TLS_KEY: its private key (PEM)
	// InboxPrefix replaces _INBOX for replies to this client (--nats-inbox-prefix,
	// RELAY_NATS_INBOX_PREFIX), so a server can let only this user
	// subscribe to them: token replies carry access tokens, and a user
	// allowed to subscribe _INBOX.> would see every other user's replies.
	InboxPrefix string
}

// ConnectEnv lists the environment variables Register reads, for usage texts.
const ConnectEnv = "RELAY_NATS_USER, RELAY_NATS_PASSWORD(_FILE), RELAY_NATS_TOKEN(_FILE), RELAY_NATS_NKEY, RELAY_NATS_CREDS, RELAY_NATS_TLS_CA, RELAY_NATS_TLS_CERT, RELAY_NATS_TLS_KEY, RELAY_NATS_INBOX_PREFIX"

// Register binds the NATS authentication flags, defaulting to the
// environment. The password and token values themselves are read only from
// the environment (RELAY_NATS_PASSWORD, RELAY_NATS_TOKEN), never from flags.
func (o *ConnectOptions) Register(fs *flag.FlagSet, getenv func(string) string) {
	o.Password = getenv("RELAY_NATS_PASSWORD")
	o.Token = getenv("RELAY_NATS_TOKEN")
	fs.StringVar(&o.User, "nats-user", getenv("RELAY_NATS_USER"), "NATS user name; the password from --nats-password-file or RELAY_NATS_PASSWORD (env RELAY_NATS_USER)")
	fs.StringVar(&o.PasswordFile, "nats-password-file", getenv("RELAY_NATS_PASSWORD_FILE"), "file holding the NATS user's password (env RELAY_NATS_PASSWORD_FILE)")
	fs.StringVar(&o.TokenFile, "nats-token-file", getenv("RELAY_NATS_TOKEN_FILE"), "file holding a NATS authentication token; or RELAY_NATS_TOKEN (env RELAY_NATS_TOKEN_FILE)")
	fs.StringVar(&o.NKeyFile, "nats-nkey", getenv("RELAY_NATS_NKEY"), "file holding an nkey user seed (env RELAY_NATS_NKEY)")
	fs.StringVar(&o.CredsFile, "nats-creds", getenv("RELAY_NATS_CREDS"), "NATS credentials file: user JWT and seed (env RELAY_NATS_CREDS)")
	fs.StringVar(&o.TLSCA, "nats-tls-ca", getenv("RELAY_NATS_TLS_CA"), "PEM CA bundle that verifies the NATS server's certificate (env RELAY_NATS_TLS_CA)")
	fs.StringVar(&o.TLSCert, "nats-tls-cert", getenv("RELAY_NATS_TLS_CERT"), "client certificate for NATS TLS, PEM (env RELAY_NATS_TLS_CERT)")
	fs.StringVar(&o.TLSKey, "nats-tls-key", getenv("RELAY_NATS_TLS_KEY"), "private key of --nats-tls-cert, PEM (env RELAY_NATS_TLS_KEY)")
	fs.StringVar(&o.InboxPrefix, "nats-inbox-prefix", getenv("RELAY_NATS_INBOX_PREFIX"), "reply subject prefix instead of _INBOX, for per-user subscribe permissions (env RELAY_NATS_INBOX_PREFIX)")
}

// HasAuth reports whether a way to authenticate is named (user, token,
// nkey or credentials).
func (o ConnectOptions) HasAuth() bool {
	return o.User != "" || o.Token != "" || o.TokenFile != "" || o.NKeyFile != "" || o.CredsFile != ""
}

// IsZero reports whether no authentication or TLS option is set.
func (o ConnectOptions) IsZero() bool { return o == ConnectOptions{} }

// Validate checks the combination and that every named file is readable;
// the messages name the flag to fix.
func (o ConnectOptions) Validate() error {
	var errs []error
	var methods []string
	if o.User != "" {
		methods = append(methods, "--nats-user")
	}
	if o.Token != "" || o.TokenFile != "" {
		methods = append(methods, "a token (--nats-token-file or RELAY_NATS_TOKEN)")
	}
	if o.NKeyFile != "" {
		methods = append(methods, "--nats-nkey")
	}
	if o.CredsFile != "" {
		methods = append(methods, "--nats-creds")
	}
	if len(methods) > 1 {
		errs = append(errs, fmt.Errorf("NATS authentication: give one of %s", strings.Join(methods, ", ")))
	}
	switch {
	case o.User != "" && o.Password == "" && o.PasswordFile == "":
		errs = append(errs, errors.New("--nats-user needs a password: --nats-password-file FILE or RELAY_NATS_PASSWORD"))
	case o.User == "" && (o.Password != "" || o.PasswordFile != ""):
		errs = append(errs, errors.New("a NATS password without --nats-user (RELAY_NATS_USER)"))
	case o.Password != "" && o.PasswordFile != "":
		errs = append(errs, errors.New("give the NATS password either in --nats-password-file or in RELAY_NATS_PASSWORD, not both"))
	case o.Token != "" && o.TokenFile != "":
		errs = append(errs, errors.New("give the NATS token either in --nats-token-file or in RELAY_NATS_TOKEN, not both"))
	}
	if o.InboxPrefix != "" && (strings.ContainsAny(o.InboxPrefix, "*> \t") || strings.HasSuffix(o.InboxPrefix, ".")) {
		errs = append(errs, fmt.Errorf("--nats-inbox-prefix %q: want a subject prefix without wildcards, spaces or a trailing dot, e.g. _INBOX_relay_workers", o.InboxPrefix))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		errs = append(errs, errors.New("--nats-tls-cert and --nats-tls-key go together"))
	}
	for _, f := range []struct{ flag, path string }{
		{"--nats-password-file", o.PasswordFile}, {"--nats-token-file", o.TokenFile},
		{"--nats-nkey", o.NKeyFile}, {"--nats-creds", o.CredsFile},
		{"--nats-tls-ca", o.TLSCA}, {"--nats-tls-cert", o.TLSCert}, {"--nats-tls-key", o.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", f.flag, err))
		}
	}
	return errors.Join(errs...)
}

// Options turns the settings into nats.go options. It reads the password,
// token and nkey seed files now, so a bad file fails before the dial.
func (o ConnectOptions) Options() ([]nats.Option, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if o.User != "" {
		pw, err := secretValue(o.Password, o.PasswordFile, "--nats-password-file")
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(o.User, pw))
	}
	if o.Token != "" || o.TokenFile != "" {
		tok, err := secretValue(o.Token, o.TokenFile, "--nats-token-file")
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Token(tok))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			// nats.go's message names neither the file nor the seed.
			return nil, fmt.Errorf("--nats-nkey %s: %w", o.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if o.CredsFile != "" {
		// nats.go reads the file only when it dials, and its error then
		// looks like a server that is not up; read it now. The messages
		// name the file, never its content.
		b, err := os.ReadFile(o.CredsFile)
		if err == nil {
			if _, err = nkeys.ParseDecoratedJWT(b); err == nil {
				var kp nkeys.KeyPair
				if kp, err = nkeys.ParseDecoratedNKey(b); err == nil {
					kp.Wipe()
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("--nats-creds %s: not a NATS credentials file (user JWT and seed): %v", o.CredsFile, err)
		}
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.TLSCA != "" {
		// Read here too: nats.go's error comes from the dial, where a
		// waiting relay takes it for a server that is not up yet.
		b, err := os.ReadFile(o.TLSCA)
		if err == nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			err = errors.New("no PEM certificate in it")
		}
		if err != nil {
			return nil, fmt.Errorf("--nats-tls-ca %s: %v", o.TLSCA, err)
		}
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey); err != nil {
			return nil, fmt.Errorf("--nats-tls-cert/--nats-tls-key: %v", err)
		}
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	// Both TLS options turn TLS on with verification; there is no switch
	// to skip it.
	return opts, nil
}

// secretValue is value, or the content of file, without the line ends
// that end it: a file written by echo or an editor ends in one, and so
// does a variable filled from such a file (a Kubernetes secret made with
// --from-file), while a NATS password may begin or end in spaces. Both
// sources are read alike, so moving a password from one to the other
// cannot change it.
func secretValue(value, file, flagName string) (string, error) {
	if file == "" {
		return strings.TrimRight(value, "\r\n"), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %v", flagName, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%s: %s is empty", flagName, file)
	}
	return v, nil
}

// CheckURL refuses a NATS server URL (or comma-separated list) that no
// connection could ever use: nats.go reports one only when it dials, and
// a relay waiting for its server would wait for ever. Each entry is
// [scheme://][user@][host][:port], the scheme nats, tls, ws or wss; empty
// entries are skipped, as nats.go skips them, and a missing host is
// nats.go's localhost.
func CheckURL(urls string) error {
	n := 0
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		n++
		full := u
		if !strings.Contains(full, "://") {
			full = "nats://" + full
		}
		p, err := url.Parse(full)
		if err != nil {
			err = parseErrorRedacted(full)
		}
		if err == nil && p.Host == "" {
			err = errors.New("no host or port")
		}
		if err == nil {
			switch p.Scheme {
			case "nats", "tls", "ws", "wss":
			default:
				err = fmt.Errorf("scheme %s: want nats, tls, ws or wss", p.Scheme)
			}
		}
		if err != nil {
			return fmt.Errorf("NATS URL %q: %v (e.g. nats://nats.contoso.com:4222)", RedactURL(u), err)
		}
	}
	if n == 0 {
		return fmt.Errorf("no NATS URL in %q (e.g. nats://nats.contoso.com:4222)", urls)
	}
	return nil
}

// parseErrorRedacted says why url.Parse refused u without showing its
// credentials: url.Parse's own error quotes the whole URL, password
// included, and an escape it cannot read may be part of the password. So
// the redacted URL is parsed again for the reason; when that one parses,
// the fault was in the credentials, which are not shown.
func parseErrorRedacted(u string) error {
	_, err := url.Parse(RedactURL(u))
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	if err != nil {
		return err
	}
	return errors.New("the password or token in it cannot be read (write %, @, : or / in it as %XX, e.g. %25 for %)")
}

// RedactURL is a NATS URL (or comma-separated list) fit for messages,
// logs and the status page: a password in it (user:password@) or a token
// (token@, as nats.go reads a user name without a password) is replaced
// by "redacted".
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		start := strings.Index(u, "://") + 3
		if start < 3 {
			start = 0
		}
		// The userinfo ends at the authority's last "@", and the
		// authority at the first "/", "?" or "#" (RFC 3986 §3.2, as
		// net/url and so nats.go read it): an "@" in a path, query or
		// fragment is not the end of the userinfo, which would otherwise
		// be left showing.
		rest := u[start:]
		if end := strings.IndexAny(rest, "/?#"); end >= 0 {
			rest = rest[:end]
		}
		at := strings.LastIndex(rest, "@")
		if at < 0 {
			continue
		}
		userinfo := "redacted"
		if user, _, ok := strings.Cut(rest[:at], ":"); ok {
			userinfo = user + ":redacted"
		}
		parts[i] = u[:start] + userinfo + u[start+at:]
	}
	return strings.Join(parts, ",")
}

// ConnectHint is what a command that could not connect tells its user to
// do: name credentials when NATS refused the ones given (or none), else
// check that the server runs where the URL says.
func ConnectHint(err error) string {
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
		return "NATS refused this command's credentials: name them (--nats-nkey, --nats-creds or --nats-user), or the relay's data directory whose nkeys/ seeds it reads (--data-dir or RELAY_DATA_DIR; the sandbox's is data/sandbox)"
	}
	return "is relay serve or relay sandbox running? set --nats-url or RELAY_NATS_URL"
}

// ConnectWith is Connect with the authentication and TLS options.
func ConnectWith(url, name string, o ConnectOptions, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := o.Options()
	if err != nil {
		return nil, err
	}
	return Connect(url, name, append(opts, extra...)...)
}
