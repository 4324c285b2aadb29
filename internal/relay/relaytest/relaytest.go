// Package relaytest helps tests run the delivery engine: a fast retry
// schedule and the stores authtool opens before it enrols. (Accounts are
// connected through consent.Enroller.SignIn against the fake, and a
// compressed clock is clock.NewCompressed.)
package relaytest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/relay"
	"relay365/internal/token"
)

// FastRetry is a retry and probe schedule for tests: a retried or paused
// message comes back within milliseconds.
var FastRetry = relay.Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2}

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
