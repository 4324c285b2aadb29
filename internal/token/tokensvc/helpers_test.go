package tokensvc

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/submit"
	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// env is one embedded NATS server, the fake Office 365 in strict rotation
// mode on a fake clock, and the KV buckets; services and clients are added
// per test, each on its own connection like separate processes.
type env struct {
	t       *testing.T
	ctx     context.Context
	nats    *queuetest.Env
	fake    *fakeo365.Server
	clock   *clock.Fake
	keyFile string
	store   *token.Store
	reg     *account.Registry
	logs    *tokentest.Buffer
	events  *tokentest.Buffer
	secrets *tokentest.Secrets
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvAccessTTL(t, 0)
}

// newEnvAccessTTL is newEnv with the fake's access tokens living ttl (0:
// its default, about an hour).
func newEnvAccessTTL(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, nats: queuetest.Start(t), clock: clock.NewFake(t0), logs: &tokentest.Buffer{}, events: &tokentest.Buffer{}}
	var err error
	e.fake, err = fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), StrictRotation: true, Now: e.clock.Now, PerMinute: -1, AccessTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.fake.Close() })
	e.keyFile = filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(e.keyFile); err != nil {
		t.Fatal(err)
	}
	keys, err := token.LoadKeyring(e.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if e.store, err = token.OpenStore(ctx, e.nats.JS, keys); err != nil {
		t.Fatal(err)
	}
	if e.reg, err = account.OpenRegistry(ctx, e.nats.JS); err != nil {
		t.Fatal(err)
	}
	e.secrets = tokentest.Watch(t, e.store)
	e.secrets.AddKeyFile(t, e.keyFile)
	// Every event published during the test is kept for the secret scan.
	sub, err := e.nats.NC.Subscribe("relay.events.>", func(m *nats.Msg) { e.events.Write(append(m.Data, '\n')) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	t.Cleanup(func() {
		e.secrets.Check(t, "logs", e.logs.Bytes())
		e.secrets.Check(t, "events", e.events.Bytes())
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *env) conn(name string) *nats.Conn {
	e.t.Helper()
	nc, err := queue.Connect(e.nats.URL, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

// replica starts one token service replica on its own connection and
// metrics registry.
func (e *env) replica(name string) (*Service, *prometheus.Registry) {
	e.t.Helper()
	return e.replicaWith(Config{Instance: name})
}

// replicaWith starts a replica with cfg's identity settings (HTTPClient,
// LeaseTTL) on the test's buckets and clock.
func (e *env) replicaWith(cfg Config) (*Service, *prometheus.Registry) {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	cfg.NC, cfg.Store, cfg.Accounts, cfg.Clock, cfg.Registerer = e.conn(cfg.Instance), e.store, e.reg, e.clock, reg
	cfg.Log = zerolog.New(e.logs).With().Str("replica", cfg.Instance).Logger()
	s, err := Start(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s, reg
}

func (e *env) client() *Client {
	return NewClient(ClientConfig{NC: e.conn("client"), Now: e.clock.Now})
}

// consent connects alias (mailbox alias@contoso.com) through the real
// consent path against the fake: auth code + PKCE, test mail, store.
func (e *env) consent(alias string) { e.consentWith(alias, nil) }

// consentWith is consent with an account changed by mod first (a proxy).
func (e *env) consentWith(alias string, mod func(*account.Account)) {
	e.t.Helper()
	acct := account.Account{
		Alias: alias, Mailbox: alias + "@contoso.com", Tenant: "contoso.onmicrosoft.com", Authority: e.fake.AuthorityURL(),
		ClientID: "client-" + alias, SMTPAddr: e.fake.SMTPAddr(), CAFile: e.fake.CAFile(),
	}
	if mod != nil {
		mod(&acct)
	}
	acct.Normalize()
	authURL, tokenURL, _ := acct.Endpoints()
	tok, err := consent.Browser{ClientID: acct.ClientID, AuthURL: authURL, TokenURL: tokenURL, Scopes: acct.Scopes, LoginHint: acct.Mailbox}.
		Run(e.ctx, consent.FollowURL(e.ctx))
	if err != nil {
		e.t.Fatal(err)
	}
	err = consent.Enroller{Accounts: e.reg, Store: e.store, Transport: &submit.Transport{}, Now: e.clock.Now}.Enroll(e.ctx, acct, tok, "", "")
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) record(alias string) token.Record {
	e.t.Helper()
	rec, _, err := e.store.Get(e.ctx, alias)
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// eventually polls cond every 5ms until it holds or the test's deadline.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-e.ctx.Done():
			e.t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// waitServed waits until the replica's endpoint has counted want
// requests and fails if it counted more. nats.go's micro counts a request
// after its handler returned, so after the reply arrived, not before.
func (e *env) waitServed(s *Service, name string, want int) {
	e.t.Helper()
	e.eventually(fmt.Sprintf("%s to count %d requests", name, want), func() bool { return endpointRequests(s, name) >= want })
	if n := endpointRequests(s, name); n != want {
		e.t.Fatalf("%s served %d requests, want %d", name, n, want)
	}
}

func endpointRequests(s *Service, name string) int {
	for _, ep := range s.Stats().Endpoints {
		if ep.Name == name {
			return ep.NumRequests
		}
	}
	return -1
}

// rawRequest sends a request and returns the reply with its headers.
func rawRequest(t *testing.T, nc *nats.Conn, subject string, body any) *nats.Msg {
	t.Helper()
	b, _ := json.Marshal(body)
	if s, ok := body.(string); ok {
		b = []byte(s)
	}
	msg, err := nc.Request(subject, b, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}
