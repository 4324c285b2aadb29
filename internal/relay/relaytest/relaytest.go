// Package relaytest helps tests run the delivery engine against the fake
// Office 365: accounts connected through the real consent path, and a
// compressed clock the engine and the fake share.
package relaytest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/relay"
	"relay365/internal/token"
)

// FastRetry is a retry and probe schedule for tests: a retried or paused
// message comes back within milliseconds.
var FastRetry = relay.Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2}

// ClientID is the app registration the tests consent with.
const ClientID = "00000000-0000-0000-0000-0000relaytest"

// Account is an account of mailbox in tenant, pointing at the fake.
func Account(fake *fakeo365.Server, alias, mailbox, tenant string) account.Account {
	return account.Account{
		Alias: alias, Mailbox: mailbox, Tenant: tenant, Authority: fake.AuthorityURL(),
		ClientID: ClientID, SMTPAddr: fake.SMTPAddr(), CAFile: fake.CAFile(),
	}
}

// Enroll connects acct through the real consent path: authorization code
// with PKCE against the fake (which signs acct.Mailbox in at once), a test
// mail, then the sealed tokens and the account. The test mail's subject is
// "Relay365: <alias> is connected".
func Enroll(ctx context.Context, fake *fakeo365.Server, accounts *account.Registry, store *token.Store, acct account.Account) error {
	acct.Normalize()
	authURL, tokenURL, _ := acct.Endpoints()
	tok, err := consent.Browser{
		ClientID: acct.ClientID, AuthURL: authURL, TokenURL: tokenURL, Scopes: acct.Scopes, LoginHint: acct.Mailbox,
	}.Run(ctx, consent.FollowURL(ctx))
	if err != nil {
		return err
	}
	return consent.Enroller{Accounts: accounts, Store: store, Transport: &relay.Transport{}}.Enroll(ctx, acct, tok, "", "")
}

// Compressed is a clock that runs Factor times faster than the wall clock
// from the moment it is made. It implements relay.Clock; its Now also
// serves as fakeo365.Config.Now.
type Compressed struct {
	Factor float64
	start  time.Time // wall
	base   time.Time // what Now says at start
}

// NewCompressed starts a compressed clock at the current time.
func NewCompressed(factor float64) *Compressed {
	now := time.Now()
	return &Compressed{Factor: factor, start: now, base: now}
}

// Now is the compressed time.
func (c *Compressed) Now() time.Time {
	return c.base.Add(time.Duration(float64(time.Since(c.start)) * c.Factor))
}

// After waits d of compressed time.
func (c *Compressed) After(d time.Duration) <-chan time.Time {
	out := make(chan time.Time, 1)
	time.AfterFunc(time.Duration(float64(d)/c.Factor), func() { out <- c.Now() })
	return out
}

// OpenStores is what authtool does before it enrols: a new key file in
// t.TempDir(), the account registry and the sealed token store on js.
func OpenStores(t testing.TB, ctx context.Context, js jetstream.JetStream) (string, *account.Registry, *token.Store) {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	keys, err := token.LoadKeyring(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := account.OpenRegistry(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, js, keys)
	if err != nil {
		t.Fatal(err)
	}
	return keyFile, accounts, store
}
