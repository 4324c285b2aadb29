//go:build integration

package deploy_test

import (
	"bytes"
	"context"
	"crypto"
	crand "crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/mail"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"relay365/internal/authcmd"
	"relay365/internal/cli"
	"relay365/internal/pki"
	"relay365/internal/submit"
	"relay365/internal/testutil"
)

// The third-party world: names the servers are configured with.
const (
	tpDomain   = "example.test"
	tpMailbox  = "alerts@" + tpDomain // the account's mailbox: signs in, sends, receives
	tpOther    = "other@" + tpDomain  // a second person who may sign in
	tpClientID = "relay365-authtool"  // authtool's public client at the OpenID Provider
	tpKeyID    = "relay365-test-key"  // the kid of the OpenID Provider's signing key
	tpVmailUID = 5000                 // owner of the delivered Maildirs (no such user is needed)
	// Access tokens live 65 s and relay serve refreshes 60 s before
	// expiry (its smallest --refresh-margin) plus a jitter of up to 12 s,
	// so the relay refreshes within about 17 s of the consent, and the
	// mail it sends goes with a refreshed token.
	tpTokenTTL      = 65
	tpRefreshMargin = "1m"
)

// TestThirdParty connects a mailbox and delivers mail through servers
// this project did not write, configured as their documentation says:
//
//   - identity: panva's oidc-provider (npm, a certified OpenID Provider;
//     deploy/thirdparty/oidc-provider.mjs is its configuration): the
//     authorization code flow with PKCE, a loopback redirect and the
//     issuer in the answer (RFC 9207), its own login and consent pages,
//     refresh tokens that rotate, access tokens for the resource
//     "urn:relay365:smtp" with the scope smtp that are JWTs signed RS256,
//     as Entra's are;
//   - SMTP: Debian's postfix (smtpd on a loopback port, STARTTLS with a
//     certificate from a throw-away CA, AUTH only after STARTTLS, the
//     sender must be the authenticated user, delivery to Maildirs of
//     virtual mailboxes, nothing relayed off the machine) with Debian's
//     dovecot-core as its SASL server: AUTH XOAUTH2 and OAUTHBEARER,
//     each token validated by Dovecot's oauth2 passdb with the
//     provider's public key: signature, issuer, expiry, the scope smtp,
//     and the subject against the XOAUTH2 user.
//
// Then, as an operator would: relay serve runs as a binary with its
// embedded NATS; authtool login (in process, the test playing the person
// at the browser with a cookie jar) signs the mailbox in, sends its test
// mail through postfix, and stores the account; the relay refreshes the
// token at the provider; relay publish queues a message, and both mails
// must arrive in the mailbox's Maildir with postfix's mark of a sender
// authenticated with XOAUTH2 over TLS. A sign-in by another person is
// refused by authtool (the ID token names them), and postfix answers 535
// to a token signed with another key, so the test fails when the SMTP
// side accepts what it should not. Every XOAUTH2 response, over 512
// octets with a JWT, must have gone after an empty 334.
func TestThirdParty(t *testing.T) {
	postfix, dovecot, node := lookPath(t, "postfix"), lookPath(t, "dovecot"), lookPath(t, "node")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()

	dir := sharedTempDir(t)
	ca, err := pki.NewCA("relay365 third-party test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := pki.WriteFiles(dir, "smtp", cert)
	if err != nil {
		t.Fatal(err)
	}

	op := startOIDCProvider(t, ctx, node, dir)
	authPort, dovecotLogs := startDovecot(t, ctx, dovecot, dir, op)
	smtp := startPostfix(t, ctx, postfix, dir, certFile, keyFile, authPort)
	t.Logf("servers up after %s: oidc-provider %s, dovecot auth 127.0.0.1:%d, postfix %s", time.Since(start).Round(time.Millisecond), op.issuer, authPort, smtp.addr)

	relay := startRelay(t, ctx, dir)

	var landed *url.URL // where the browser was sent back to, last
	login := func(t *testing.T, signInAs string) (int, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		env := map[string]string{"RELAY_NATS_URL": relay.natsURL, "RELAY_TOKEN_KEY_FILE": relay.keyFile, "RELAY_DATA_DIR": relay.dataDir}
		code := authcmd.Run(ctx, []string{"login", "--account", "alerts", "--mailbox", tpMailbox,
			"--tenant", tpDomain, "--client-id", tpClientID,
			"--auth-url", op.issuer + "/auth", "--token-url", op.issuer + "/token",
			"--scopes", "smtp offline_access", "--smtp", smtp.addr, "--ca-file", caFile, "--timeout", "1m"},
			authcmd.Env{
				Env: cli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return env[k] }},
				OpenBrowser: func(u string) (err error) {
					landed, err = signIn(ctx, u, signInAs)
					return err
				},
			})
		t.Logf("authtool login, signed in as %s → exit %d\nstdout:\n%s\nstderr:\n%s", signInAs, code, stdout.String(), stderr.String())
		return code, stdout.String() + stderr.String()
	}

	t.Run("authtool refuses a sign-in by another person", func(t *testing.T) {
		code, out := login(t, tpOther)
		if code != 1 || !strings.Contains(out, "signed in as "+tpOther+", but --mailbox is "+tpMailbox) || !strings.Contains(out, "nothing was stored") {
			t.Fatalf("exit %d; want 1, the wrong-mailbox error read from the ID token, nothing stored", code)
		}
		if n := len(smtp.mails(t, "alerts")); n != 0 {
			t.Fatalf("%d mails in the mailbox; want none: the refusal comes before the test mail", n)
		}
	})

	var consentMail *mail.Message
	t.Run("authtool login, test mail through postfix", func(t *testing.T) {
		code, out := login(t, tpMailbox)
		if code != 0 || !strings.Contains(out, "connected: account alerts sends as "+tpMailbox) {
			t.Fatalf("authtool login exited %d; want 0 and the account connected", code)
		}
		// The provider named itself in its answer (RFC 9207), which
		// authtool checked against the authorization endpoint.
		if iss := landed.Query().Get("iss"); landed.Host != "127.0.0.1:"+landed.Port() || iss != op.issuer {
			t.Errorf("the sign-in came back to %s with iss %q; want authtool's loopback listener and iss %s", landed.Redacted(), iss, op.issuer)
		}
		consentMail = smtp.waitMail(t, ctx, "alerts", "Relay365: alerts is connected")
	})
	if t.Failed() {
		t.FailNow()
	}
	checkXOAUTH2Delivery(t, smtp, consentMail)

	t.Run("relay serve refreshes the token", func(t *testing.T) {
		testutil.Eventually(t, ctx, "relay serve to refresh the token at the OpenID Provider", func() bool {
			return relay.logged("token refreshed", `"rotated":true`)
		})
		if !strings.Contains(op.logs.String(), "event grant.success refresh_token "+tpClientID) {
			t.Fatalf("the OpenID Provider logged no refresh_token grant for %s", tpClientID)
		}
	})

	t.Run("relay publish, delivered through postfix", func(t *testing.T) {
		const subject = "CPU high on web-3"
		run(t, ctx, relay.bin, "publish", "--nats-url", relay.natsURL, "--nats-nkey", filepath.Join(relay.dataDir, "nkeys", "producer.nk"),
			"--account", "alerts", "--to", tpMailbox, "--subject", subject, "--text", "load 17.2",
			"--from", "Monitoring <monitoring@elsewhere.test>")
		m := smtp.waitMail(t, ctx, "alerts", subject)
		checkXOAUTH2Delivery(t, smtp, m)
		if rt := m.Header.Get("Reply-To"); !strings.Contains(rt, "monitoring@elsewhere.test") {
			t.Errorf("Reply-To %q; want the producer's From (the rewrite policy)", rt)
		}
		if b, _ := io.ReadAll(m.Body); !strings.Contains(string(b), "load 17.2") {
			t.Errorf("body %q; want the published text", b)
		}
	})

	t.Run("postfix refuses a token the OpenID Provider never signed", func(t *testing.T) {
		// Everything right but the signature: the provider's issuer, the
		// mailbox as subject, the scope, the key id, a valid lifetime;
		// signed with another key. As long as a real one, so it goes
		// after an empty 334 too.
		forger, err := rsa.GenerateKey(crand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().Unix()
		forged := signJWT(t, forger, map[string]any{"iss": op.issuer, "sub": tpMailbox, "aud": "urn:relay365:smtp",
			"scope": "smtp", "client_id": tpClientID, "iat": now, "exp": now + 300, "jti": "forged"})
		tr := &submit.Transport{}
		s, err := tr.Dial(ctx, submit.Endpoint{Addr: smtp.addr, CAFile: caFile}, tpMailbox, forged)
		if err == nil {
			s.Close()
			t.Fatal("AUTH XOAUTH2 with a token signed by another key was accepted")
		}
		var se *submit.SMTPError
		if !errors.As(err, &se) || se.Stage != "auth" || se.Code != 535 {
			t.Fatalf("got %v; want a 535 reply to AUTH", err)
		}
		if !strings.Contains(dovecotLogs.String(), "Bad signature") {
			t.Errorf("Dovecot did not log the bad signature")
		}
		t.Logf("refused as it should be: %v", err)
	})
	t.Run("every XOAUTH2 response went after an empty 334", func(t *testing.T) {
		// The provider's access tokens are RS256 JWTs (a 2048-bit
		// signature alone is 342 characters), so every AUTH line with
		// the initial response would pass 512 octets: authtool and the
		// relay sent AUTH XOAUTH2 alone and the response after postfix's
		// empty 334 (RFC 4954 §4), which postfix hands Dovecot as a
		// continuation, not as resp= on the AUTH request.
		n := 0
		for line := range strings.Lines(dovecotLogs.String()) {
			if strings.Contains(line, "client in: AUTH\t") && strings.Contains(line, "\tXOAUTH2\t") {
				n++
				if strings.Contains(line, "resp=") {
					t.Errorf("an initial response came on the AUTH line: %s", line)
				}
			}
		}
		if n < 3 { // authtool's test mail, the relay's session, the forged token
			t.Errorf("Dovecot saw %d XOAUTH2 exchanges; want at least 3", n)
		}
	})
	t.Logf("third-party test: %s in all", time.Since(start).Round(time.Millisecond))
}

// sharedTempDir is a temporary directory that the servers' unprivileged
// users can reach (postfix writes its data directory as the postfix
// user, delivers as tpVmailUID), removed when the test ends. t.TempDir
// is private to root.
func sharedTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "relay365-thirdparty-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeConfig(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitPort waits until addr accepts TCP connections.
func waitPort(t *testing.T, ctx context.Context, what, addr string) {
	t.Helper()
	testutil.Eventually(t, ctx, what+" to listen on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// oidcProvider is the running OpenID Provider.
type oidcProvider struct {
	issuer  string
	key     *rsa.PrivateKey // its signing key
	pubFile string          // the public key, PEM
	logs    *testutil.Buffer
}

// startOIDCProvider runs deploy/thirdparty/oidc-provider.mjs with the
// pinned oidc-provider that .ci/run installs there (npm ci), signing
// with a fresh RSA key.
func startOIDCProvider(t *testing.T, ctx context.Context, node, dir string) *oidcProvider {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("thirdparty", "oidc-provider.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(script), "node_modules", "oidc-provider", "package.json")); err != nil {
		t.Fatalf("oidc-provider is not installed: npm ci --prefix deploy/thirdparty (.ci/run does): %v", err)
	}
	port := testutil.FreePort(t)
	op := &oidcProvider{issuer: fmt.Sprintf("http://127.0.0.1:%d", port), pubFile: filepath.Join(dir, "oidc-signing.pub.pem")}
	if op.key, err = rsa.GenerateKey(crand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(op.key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&op.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "oidc-signing.key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, op.pubFile, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})))
	cmd := exec.Command(node, script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"OIDC_PORT="+strconv.Itoa(port),
		"OIDC_CLIENT_ID="+tpClientID,
		"OIDC_ACCOUNTS="+tpMailbox+" "+tpOther,
		"OIDC_ACCESS_TOKEN_TTL="+strconv.Itoa(tpTokenTTL),
		"OIDC_SIGNING_KEY="+keyFile,
		"OIDC_SIGNING_KID="+tpKeyID,
	)
	op.logs = startServerCmd(t, cmd, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
	testutil.Eventually(t, ctx, "oidc-provider's discovery document", func() bool {
		resp, err := http.Get(op.issuer + "/.well-known/openid-configuration")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var d struct {
			Issuer string `json:"issuer"`
		}
		return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&d) == nil && d.Issuer == op.issuer
	})
	return op
}

// startDovecot runs Dovecot as a SASL server only (no IMAP, no POP3):
// XOAUTH2 and OAUTHBEARER checked by its oauth2 passdb, which validates
// the provider's JWT access tokens itself (introspection_mode = local):
// the signature with the provider's public key, the issuer, the expiry,
// the scope smtp, and the subject against the XOAUTH2 user. It listens
// for postfix on a loopback port and returns it.
func startDovecot(t *testing.T, ctx context.Context, bin, dir string, op *oidcProvider) (int, *testutil.Buffer) {
	t.Helper()
	d := filepath.Join(dir, "dovecot")
	port := testutil.FreePort(t)
	pub, err := os.ReadFile(op.pubFile)
	if err != nil {
		t.Fatal(err)
	}
	// The key dictionary's lookup key is shared/<azp>/<alg>/<kid>; azp is
	// "default" for tokens without that claim (oidc-provider's have
	// client_id instead).
	writeConfig(t, filepath.Join(d, "keys", "default", "RS256", tpKeyID), string(pub))
	writeConfig(t, filepath.Join(d, "oauth2.conf.ext"), `# Dovecot's oauth2 passdb (/usr/share/dovecot/dovecot-oauth2.conf.ext):
# the JWT access tokens are validated here, with the provider's key.
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=`+d+`/keys/
issuers = `+op.issuer+`
scope = smtp
username_attribute = sub
debug = yes
`)
	conf := filepath.Join(d, "dovecot.conf")
	writeConfig(t, conf, fmt.Sprintf(`# Dovecot as postfix's SASL server, nothing else.
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = /dev/stderr
protocols =
listen = 127.0.0.1
ssl = no
auth_mechanisms = xoauth2 oauthbearer
auth_verbose = yes
auth_debug = yes
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %[1]s/oauth2.conf.ext
}
userdb {
  driver = static
  args = uid=%[3]d gid=%[3]d home=%[1]s/home/%%u allow_all_users=yes
}
service auth {
  inet_listener {
    address = 127.0.0.1
    port = %[2]d
  }
}
`, d, port, tpVmailUID))
	logs := startServer(t, bin, "-F", "-c", conf)
	waitPort(t, ctx, "dovecot's auth service", fmt.Sprintf("127.0.0.1:%d", port))
	return port, logs
}

// postfixServer is the running postfix.
type postfixServer struct {
	addr    string // smtpd, host:port
	maildir string // virtual_mailbox_base
	logs    *testutil.Buffer
}

// startPostfix runs postfix from a configuration directory of its own
// (postfix -c DIR start-fg, logging to stdout) with smtpd on a loopback
// port: STARTTLS, AUTH through Dovecot only after it, mail accepted only
// from an authenticated sender sending as itself, delivered to the
// Maildirs of the virtual mailboxes tpMailbox and tpOther; nothing is
// relayed off the machine.
func startPostfix(t *testing.T, ctx context.Context, bin, dir, certFile, keyFile string, authPort int) *postfixServer {
	t.Helper()
	d := filepath.Join(dir, "postfix")
	p := &postfixServer{addr: testutil.FreeAddr(t), maildir: filepath.Join(dir, "mail")}
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("the postfix user (made by Debian's postfix package): %v", err)
	}
	uid, _ := strconv.Atoi(pfUser.Uid)
	for _, sub := range []string{"conf", "spool", "data", "mail"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(d, "data"), uid, -1); err != nil { // master's lock, written as the postfix user
		t.Fatal(err)
	}
	if err := os.MkdirAll(p.maildir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p.maildir, tpVmailUID, tpVmailUID); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(d, "conf")
	mailboxes := fmt.Sprintf("%s %s/alerts/\n%s %s/other/\n", tpMailbox, tpDomain, tpOther, tpDomain)
	writeConfig(t, filepath.Join(conf, "vmailbox"), mailboxes)
	writeConfig(t, filepath.Join(conf, "senders"), fmt.Sprintf("%s %s\n%s %s\n", tpMailbox, tpMailbox, tpOther, tpOther))
	writeConfig(t, filepath.Join(conf, "main.cf"), fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/spool
data_directory = %[1]s/data
maillog_file = /dev/stdout
myhostname = mx.%[2]s
mydomain = %[2]s
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
biff = no
# Nothing leaves this machine.
default_transport = error:this test server delivers only to its own mailboxes
relay_transport = $default_transport
virtual_mailbox_domains = %[2]s
virtual_mailbox_base = %[3]s
virtual_mailbox_maps = texthash:%[1]s/conf/vmailbox
virtual_uid_maps = static:%[4]d
virtual_gid_maps = static:%[4]d
smtpd_tls_cert_file = %[5]s
smtpd_tls_key_file = %[6]s
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:%[7]d
smtpd_sasl_authenticated_header = yes
smtpd_sender_login_maps = texthash:%[1]s/conf/senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
`, d, tpDomain, p.maildir, tpVmailUID, certFile, keyFile, authPort))
	writeConfig(t, filepath.Join(conf, "master.cf"), p.addr+` inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`)
	run(t, ctx, bin, "-c", conf, "check")
	p.logs = startServerCmd(t, exec.Command(bin, "-c", conf, "start-fg"), func(*exec.Cmd) {
		// postfix start-fg runs the master as a child of a shell script:
		// stop it the documented way.
		exec.Command(bin, "-c", conf, "stop").Run()
	})
	testutil.Eventually(t, ctx, "postfix's smtpd greeting on "+p.addr, func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 4)
		_, err = io.ReadFull(c, b)
		return err == nil && string(b) == "220 "
	})
	return p
}

// mails reads the messages delivered to mailbox's Maildir (new/).
func (p *postfixServer) mails(t *testing.T, mailbox string) []*mail.Message {
	t.Helper()
	dir := filepath.Join(p.maildir, tpDomain, mailbox, "new")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []*mail.Message
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("delivered file %s does not parse: %v\n%s", e.Name(), err, b)
		}
		out = append(out, m)
	}
	return out
}

// waitMail waits for a message with subject in mailbox's Maildir.
func (p *postfixServer) waitMail(t *testing.T, ctx context.Context, mailbox, subject string) *mail.Message {
	t.Helper()
	var found *mail.Message
	testutil.Eventually(t, ctx, fmt.Sprintf("%q in the Maildir of %s", subject, mailbox), func() bool {
		for _, m := range p.mails(t, mailbox) {
			if m.Header.Get("Subject") == subject {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// checkXOAUTH2Delivery: postfix took m over TLS from a client that
// authenticated as the mailbox (smtpd_sasl_authenticated_header), its log
// says the method was XOAUTH2, and m is from the mailbox.
func checkXOAUTH2Delivery(t *testing.T, p *postfixServer, m *mail.Message) {
	t.Helper()
	subject := m.Header.Get("Subject")
	received := strings.Join(m.Header["Received"], "\n")
	if !strings.Contains(received, "(Authenticated sender: "+tpMailbox+")") || !strings.Contains(received, "with ESMTPSA") {
		t.Errorf("%q: Received fields do not show an authenticated TLS submission by %s:\n%s", subject, tpMailbox, received)
	}
	if from, err := m.Header.AddressList("From"); err != nil || len(from) != 1 || from[0].Address != tpMailbox {
		t.Errorf("%q: From %q; want %s", subject, m.Header.Get("From"), tpMailbox)
	}
	if logs := p.logs.String(); !strings.Contains(logs, "sasl_method=XOAUTH2, sasl_username="+tpMailbox) {
		t.Errorf("postfix logged no XOAUTH2 login as %s", tpMailbox)
	}
}

// relayServe is `relay serve` running as a binary with its embedded NATS.
type relayServe struct {
	bin, dataDir, keyFile, natsURL string
	logs                           *testutil.Buffer
}

// startRelay builds the relay, makes its key file with relay keygen and
// runs relay serve as deployed: embedded NATS on a loopback port, its
// data directory (with the role seeds authtool and relay publish use).
func startRelay(t *testing.T, ctx context.Context, dir string) *relayServe {
	t.Helper()
	r := &relayServe{bin: filepath.Join(dir, "relay"), dataDir: filepath.Join(dir, "relay-data"), keyFile: filepath.Join(dir, "token.key")}
	run(t, ctx, "go", "build", "-o", r.bin, "relay365/cmd/relay")
	run(t, ctx, r.bin, "keygen", "--out", r.keyFile)
	natsAddr := testutil.FreeAddr(t)
	r.natsURL = "nats://" + natsAddr
	r.logs = startServer(t, r.bin, "serve", "--data-dir", r.dataDir, "--key-file", r.keyFile,
		"--nats-listen", natsAddr, "--http-addr", testutil.FreeAddr(t), "--refresh-margin", tpRefreshMargin,
		"--log-format", "json")
	waitPort(t, ctx, "relay serve's embedded NATS", natsAddr)
	testutil.Eventually(t, ctx, "relay serve's role seeds", func() bool {
		_, err := os.Stat(filepath.Join(r.dataDir, "nkeys", "producer.nk"))
		return err == nil
	})
	return r
}

// logged reports whether one line of the relay's log holds all of parts.
func (r *relayServe) logged(parts ...string) bool {
	for line := range strings.Lines(r.logs.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// signIn plays the person at the browser: it opens the sign-in URL with
// a cookie jar, fills oidc-provider's login page as who (any password:
// its development pages check none), accepts its consent page, and
// follows the redirects back to authtool's loopback listener, whose URL
// it returns.
func signIn(ctx context.Context, authURL, who string) (*url.URL, error) {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	page, at, err := get(ctx, hc, authURL)
	for range 4 {
		if err != nil {
			return nil, err
		}
		form, ok := parseForm(page)
		if !ok {
			return at, nil // no form: the last redirect reached authtool
		}
		switch form.Get("prompt") {
		case "login":
			form.Set("login", who)
			form.Set("password", "any")
		case "consent":
		default:
			return nil, fmt.Errorf("unexpected page at %s:\n%s", at, page)
		}
		action, perr := at.Parse(form.Get("\x00action"))
		if perr != nil {
			return nil, perr
		}
		form.Del("\x00action")
		page, at, err = post(ctx, hc, action.String(), form)
	}
	return nil, errors.New("sign-in did not finish after four pages")
}

// signJWT makes an RS256 JWT of claims signed with key, kid tpKeyID.
func signJWT(t *testing.T, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": "RS256", "typ": "JWT", "kid": tpKeyID}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(crand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func get(ctx context.Context, hc *http.Client, u string) (string, *url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", nil, err
	}
	return do(hc, req)
}

func post(ctx context.Context, hc *http.Client, u string, form url.Values) (string, *url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return "", nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(hc, req)
}

func do(hc *http.Client, req *http.Request) (string, *url.URL, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return string(b), resp.Request.URL, err
}

var (
	formTag   = regexp.MustCompile(`(?s)<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>`)
	inputTag  = regexp.MustCompile(`<input[^>]*>`)
	attribute = regexp.MustCompile(`(\w+)="([^"]*)"`)
)

// parseForm reads the first form of an HTML page: its inputs' names and
// values, and its action under the key "\x00action".
func parseForm(page string) (url.Values, bool) {
	m := formTag.FindStringSubmatch(page)
	if m == nil {
		return nil, false
	}
	v := url.Values{"\x00action": {html.UnescapeString(m[1])}}
	for _, in := range inputTag.FindAllString(m[2], -1) {
		attrs := map[string]string{}
		for _, a := range attribute.FindAllStringSubmatch(in, -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		if attrs["name"] != "" {
			v.Set(attrs["name"], attrs["value"])
		}
	}
	return v, true
}
