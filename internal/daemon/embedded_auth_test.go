package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/pki"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/token"
)

// TestEmbeddedServerIsClosedToStrangers: the relay's own NATS server
// admits nobody without one of the seeds it wrote (mode 0600) into
// <data-dir>/nkeys, and each seed gets only its role's permissions:
// every attack of attacks is refused.
func TestEmbeddedServerIsClosedToStrangers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	s, _ := sandboxtest.Start(t, dir)
	url := s.Daemon.NATSURL

	if nc, err := queue.Connect(url, "stranger"); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was admitted")
	} else if !strings.Contains(err.Error(), "Authorization Violation") {
		t.Fatalf("a client without credentials: %v, want an authorization violation", err)
	}
	// A seed the relay did not write is a stranger too.
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	forged := dir + "/forged.nk"
	if err := os.WriteFile(forged, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if nc, err := queue.ConnectWith(url, "forger", queue.ConnectOptions{NKeyFile: forged}); err == nil {
		nc.Close()
		t.Fatal("a client with a seed of its own was admitted")
	}
	for _, r := range roles.All {
		st, err := os.Stat(roles.SeedFile(dir, r))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s seed %v %v, want mode 0600", r, st.Mode(), err)
		}
	}
	opts := map[roles.Role]queue.ConnectOptions{}
	for _, r := range roles.All {
		opts[r] = s.Daemon.ClientOptions(r)
	}
	tryAttacks(t, ctx, url, opts)
	tryLimitsReplies(t, ctx, url, opts, s.Daemon.JS, "sandbox")
}

// TestEmbeddedServerTLS: with --nats-server-tls-cert the embedded server
// speaks only TLS; a client that verifies it with the CA gets in with its
// seed, one without TLS does not.
func TestEmbeddedServerTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	ca, err := pki.NewCA("relay nats test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := pki.WriteFiles(dir, "nats", cert)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tokenKey := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(tokenKey); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.Start(ctx, daemon.Config{
		NATSListen: "127.0.0.1:0", NATSServerTLSCert: certFile, NATSServerTLSKey: keyFile,
		DataDir: dir, KeyFile: tokenKey, HTTPAddr: "off",
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	o := d.ClientOptions(roles.Producer)
	if nc, err := queue.ConnectWith(d.NATSURL, "plain", o); err == nil {
		nc.Close()
		t.Fatal("a client without TLS was admitted")
	}
	o.TLSCA = caFile
	nc, err := queue.ConnectWith(d.NATSURL, "tls", o)
	if err != nil {
		t.Fatalf("a producer with the CA and its seed: %v", err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Fatal("the connection is not TLS")
	}
}
