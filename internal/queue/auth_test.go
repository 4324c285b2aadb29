package queue_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"relay365/internal/pki"
	"relay365/internal/queue"
	"relay365/internal/testutil"
)

// startAuthServer runs a plain (no JetStream) nats-server with opts on a
// free loopback port.
func startAuthServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// operatorServer sets up operator (JWT) mode with one account and returns
// the server options and a creds file for a user of that account.
func operatorServer(t *testing.T) (*server.Options, string) {
	t.Helper()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "relay365-test"
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	op, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "RELAY"
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(apub, ajwt); err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "worker"
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	return &server.Options{TrustedOperators: []*jwt.OperatorClaims{op}, AccountResolver: resolver}, testutil.WriteFile(t, "worker.creds", string(creds))
}

// TestConnectAuthMethods: each method connects with the right credentials
// and fails clearly (an authorization error, not a hang) without them.
func TestConnectAuthMethods(t *testing.T) {
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	otherKP, _ := nkeys.CreateUser()
	otherSeed, _ := otherKP.Seed()
	opOpts, credsFile := operatorServer(t)
	_, otherCreds := operatorServer(t) // a user of an operator the server does not trust

	tests := []struct {
		name      string
		server    *server.Options
		good, bad queue.ConnectOptions
	}{
		{
			name:   "user and password file",
			server: &server.Options{Users: []*server.User{{Username: "relay", Password: "s3cret-pw"}}},
			good:   queue.ConnectOptions{User: "relay", PasswordFile: testutil.WriteFile(t, "pw", "s3cret-pw\n")},
			bad:    queue.ConnectOptions{User: "relay", Password: "wrong"},
		},
		{
			// Spaces are the password's; the line end is the file's.
			name:   "password file with spaces at its ends",
			server: &server.Options{Users: []*server.User{{Username: "relay", Password: " s3cret pw "}}},
			good:   queue.ConnectOptions{User: "relay", PasswordFile: testutil.WriteFile(t, "pw", " s3cret pw \r\n")},
			bad:    queue.ConnectOptions{User: "relay", PasswordFile: testutil.WriteFile(t, "pw", "s3cret pw")},
		},
		{
			// A variable filled from a file (a Kubernetes secret made
			// with --from-file) keeps the file's line end.
			name:   "password from the environment ending in a line end",
			server: &server.Options{Users: []*server.User{{Username: "relay", Password: "s3cret-pw"}}},
			good:   queue.ConnectOptions{User: "relay", Password: "s3cret-pw\n"},
			bad:    queue.ConnectOptions{User: "relay", Password: "s3cret-pw "},
		},
		{
			// Passed as it is: not split on the comma as URL lists and
			// list flags are, nor read as URL syntax.
			name:   "password with a comma and URL characters, from the environment",
			server: &server.Options{Users: []*server.User{{Username: "relay", Password: `a,b@c:d/e%41"f g`}}},
			good:   queue.ConnectOptions{User: "relay", Password: `a,b@c:d/e%41"f g`},
			bad:    queue.ConnectOptions{User: "relay", Password: "a"},
		},
		{
			name:   "token from the environment",
			server: &server.Options{Authorization: "tok-123456"},
			good:   queue.ConnectOptions{Token: "tok-123456"},
			bad:    queue.ConnectOptions{TokenFile: testutil.WriteFile(t, "tok", "nope")},
		},
		{
			name:   "nkey seed file",
			server: &server.Options{Nkeys: []*server.NkeyUser{{Nkey: upub}}},
			good:   queue.ConnectOptions{NKeyFile: testutil.WriteFile(t, "user.nk", string(useed))},
			bad:    queue.ConnectOptions{NKeyFile: testutil.WriteFile(t, "other.nk", string(otherSeed))},
		},
		{
			name:   "creds file (operator mode)",
			server: opOpts,
			good:   queue.ConnectOptions{CredsFile: credsFile},
			bad:    queue.ConnectOptions{CredsFile: otherCreds},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := startAuthServer(t, tt.server)
			nc, err := queue.ConnectWith(ns.ClientURL(), "test", tt.good)
			if err != nil {
				t.Fatalf("right credentials: %v", err)
			}
			if err := nc.Publish("mail.send.x", []byte("{}")); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatalf("flush with right credentials: %v", err)
			}
			nc.Close()
			for _, bad := range []queue.ConnectOptions{tt.bad, {}} {
				_, err := queue.ConnectWith(ns.ClientURL(), "test", bad)
				if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization Violation") {
					t.Fatalf("wrong or no credentials %+v: want an authorization error, got %v", bad, err)
				}
				if !strings.Contains(err.Error(), "connect to NATS at") {
					t.Errorf("error does not say what failed: %v", err)
				}
			}
		})
	}
}

// TestConnectTLS: a server requiring TLS and a client certificate signed
// by its CA admits a client with --nats-tls-ca, --nats-tls-cert and
// --nats-tls-key; without the certificate, or trusting another CA, the
// connection fails: verification cannot be skipped.
func TestConnectTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("nats test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	cliCert, err := ca.Client("relay-worker")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := pki.WriteFiles(dir, "client", cliCert)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(dir, "other-ca.pem")
	if err := os.WriteFile(otherCA, other.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	ns := startAuthServer(t, &server.Options{
		TLS:       true,
		TLSVerify: true,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		},
		TLSTimeout: 5,
	})
	url := ns.ClientURL()

	nc, err := queue.ConnectWith(url, "test", queue.ConnectOptions{TLSCA: caFile, TLSCert: certFile, TLSKey: keyFile})
	if err != nil {
		t.Fatalf("client certificate and CA: %v", err)
	}
	if !nc.TLSRequired() {
		t.Error("connection is not TLS")
	}
	nc.Close()

	for name, o := range map[string]queue.ConnectOptions{
		"no client certificate": {TLSCA: caFile},
		"untrusted server":      {TLSCA: otherCA, TLSCert: certFile, TLSKey: keyFile},
		"no TLS options":        {},
	} {
		if nc, err := queue.ConnectWith(url, "test", o); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
}

// TestConnectOptionsValidate: bad combinations are refused before any
// dial, naming the flag to fix; flags and environment bind the same
// fields, and the password and token are never flag values.
func TestConnectOptionsValidate(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	pw := testutil.WriteFile(t, "pw", "x")
	for _, tt := range []struct {
		o    queue.ConnectOptions
		want string
	}{
		{queue.ConnectOptions{User: "u"}, "needs a password"},
		{queue.ConnectOptions{Password: "p"}, "without --nats-user"},
		{queue.ConnectOptions{User: "u", Password: "p", PasswordFile: pw}, "not both"},
		{queue.ConnectOptions{User: "u", Password: "p", CredsFile: pw}, "give one of"},
		{queue.ConnectOptions{TLSCert: pw}, "go together"},
		{queue.ConnectOptions{CredsFile: missing}, "--nats-creds"},
		{queue.ConnectOptions{TLSCA: missing}, "--nats-tls-ca"},
		{queue.ConnectOptions{NKeyFile: pw}, "--nats-nkey " + pw + ":"}, // not a seed: found by Options
		{queue.ConnectOptions{CredsFile: pw}, "--nats-creds " + pw + ": not a NATS credentials file"},
		{queue.ConnectOptions{TLSCA: pw}, "--nats-tls-ca " + pw + ": no PEM certificate"},
		{queue.ConnectOptions{TLSCert: pw, TLSKey: pw}, "--nats-tls-cert/--nats-tls-key"},
	} {
		_, err := tt.o.Options()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: want error containing %q, got %v", tt.o, tt.want, err)
		}
	}

	env := map[string]string{"RELAY_NATS_USER": "env-user", "RELAY_NATS_PASSWORD": "env-pw", "RELAY_NATS_TLS_CA": "/ca.pem"}
	var o queue.ConnectOptions
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.Register(fs, func(k string) string { return env[k] })
	if err := fs.Parse([]string{"--nats-creds", "/c.creds"}); err != nil {
		t.Fatal(err)
	}
	want := queue.ConnectOptions{User: "env-user", Password: "env-pw", TLSCA: "/ca.pem", CredsFile: "/c.creds"}
	if o != want {
		t.Errorf("bound %+v, want %+v", o, want)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "nats-password" || f.Name == "nats-token" {
			t.Errorf("flag --%s takes a secret as a value", f.Name)
		}
	})
}

func TestRedactURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://relay:s3cret@h:4222", "nats://relay:redacted@h:4222"},
		{"nats://s3cret@h:4222", "nats://redacted@h:4222"}, // a token
		{"relay:s3cret@h:4222", "relay:redacted@h:4222"},
		{"nats://a:4222, tls://u:s3cret@b:4443", "nats://a:4222, tls://u:redacted@b:4443"},
	} {
		if got := queue.RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCheckURL(t *testing.T) {
	for _, tt := range []struct {
		url string
		ok  bool
	}{
		{"nats://127.0.0.1:4222", true},
		{"127.0.0.1:4222", true},
		{"nats.contoso.com", true},
		{"tls://nats.contoso.com:4443", true},
		{"nats://a:4222, nats://b:4222", true},
		{"nats://relay@nats.contoso.com:4222", true},
		{"nats://127.0.0.1:4222x", false},
		{"http://nats.contoso.com:4222", false},
		{"nats://a:4222,", true}, // nats.go skips empty entries
		{"nats://a:4222,,nats://b:4222", true},
		{":4222", true}, // nats.go's localhost
		{"[::1]:4222", true},
		{"nats://user:pass@h:4222", true},
		{" , ", false},
		{"nats://", false},
		{"http://relay:s3cret@nats.contoso.com:4222", false},
		{"nats://a:4222,https://s3cret@b:4222", false},
		// url.Parse's own error quotes the whole URL, and an escape it
		// cannot read in the password quotes that part of it.
		{"nats://relay:s3cret@h:4222x", false},
		{"nats://relay:s3cret@h:4222/ x\x7f", false},
		{"nats://relay:s3cret%zz@h:4222", false},
		{"nats://s3cret%zz@h:4222", false},
	} {
		if err := queue.CheckURL(tt.url); (err == nil) != tt.ok {
			t.Errorf("CheckURL(%q) = %v, want ok %v", tt.url, err, tt.ok)
		} else if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "%zz")) {
			t.Errorf("CheckURL(%q) = %v: the error shows the secret", tt.url, err)
		}
	}
}
