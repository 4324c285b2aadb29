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
	"relay365/internal/relay"
	"relay365/internal/token"
)

// FastRetry is a retry and probe schedule for tests: a retried or paused
// message comes back within milliseconds.
var FastRetry = relay.Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2}

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
