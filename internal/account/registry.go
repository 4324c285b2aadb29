package account

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/kvwatch"
	"relay365/internal/queue"
)

// Bucket is the KV bucket holding one Account per alias.
const Bucket = "relay_accounts"

// bucketHistory is how many revisions of each account the bucket keeps.
const bucketHistory = 5

// ErrNotFound is wrapped by Get and Delete when the alias is not registered.
var ErrNotFound = errors.New("account not found")

// Registry reads and writes accounts in the relay_accounts bucket. It is
// safe for concurrent use; it holds no state besides the bucket handle.
type Registry struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	leader *queue.LeaderReader
}

// OpenRegistry creates the bucket if needed (file storage, history 5) and
// returns a registry on it. Existing buckets are updated to this config.
func OpenRegistry(ctx context.Context, js jetstream.JetStream) (*Registry, error) {
	kv, err := queue.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Relay365 sending accounts (no secrets)",
		History:     bucketHistory,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open account registry (KV bucket %s): %w", Bucket, err)
	}
	return &Registry{kv: kv, js: js, leader: queue.NewLeaderReader(js, Bucket)}, nil
}

// Put normalises and validates a, then stores it under its alias,
// replacing any previous version. A proxy_url with credentials is refused:
// they belong sealed with the tokens (consent stores RedactProxy's form
// here).
func (r *Registry) Put(ctx context.Context, a Account) error {
	a.Normalize()
	if err := a.Validate(); err != nil {
		return err
	}
	if ProxyHasCredentials(a.ProxyURL) {
		return fmt.Errorf("account %s: proxy_url holds credentials: they are sealed with the tokens, never stored in %s; store %s instead", a.Alias, Bucket, RedactProxy(a.ProxyURL))
	}
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode account %s: %w", a.Alias, err)
	}
	if _, err := r.kv.Put(ctx, a.Alias, b); err != nil {
		return fmt.Errorf("store account %s: %w", a.Alias, err)
	}
	return nil
}

// Get returns the account stored under alias; a missing alias gives an
// error wrapping ErrNotFound. It reads the bucket's stream leader, never
// a direct get (queue.LeaderReader), which a replica restarted after an
// outage answers before it has caught up: an account registered during
// the outage read as not registered, and a worker's sweeper, in which its
// lane had not started yet, could dead-letter its queued mail as an
// unknown account's; one removed read as still there (docs/design.md
// §7.10).
func (r *Registry) Get(ctx context.Context, alias string) (Account, error) {
	if err := ValidateAlias(alias); err != nil {
		return Account{}, err
	}
	v, _, found, err := r.leader.Last(ctx, alias)
	switch {
	case err != nil:
		return Account{}, fmt.Errorf("read account %s: %w", alias, err)
	case !found:
		return Account{}, fmt.Errorf("account %s: %w (register it with: authtool login --account %s)", alias, ErrNotFound, alias)
	}
	return decode(alias, v)
}

// List returns all accounts sorted by alias; an empty bucket gives an
// empty slice and no error.
func (r *Registry) List(ctx context.Context) ([]Account, error) {
	keys, err := r.kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	// Keys stops early without an error when ctx ends: do not return a
	// silently truncated list.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	out := make([]Account, 0, len(keys)) // Keys returns them sorted
	for _, k := range keys {
		e, err := r.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted between listing and reading
		}
		if err != nil {
			return nil, fmt.Errorf("list accounts: read %s: %w", k, err)
		}
		a, err := decode(k, e.Value())
		if err != nil {
			return nil, fmt.Errorf("list accounts: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

// Delete removes the account; a missing alias gives an error wrapping
// ErrNotFound. Its sealed tokens live elsewhere (token.Store.Delete).
func (r *Registry) Delete(ctx context.Context, alias string) error {
	if err := ValidateAlias(alias); err != nil {
		return err
	}
	e, err := r.kv.Get(ctx, alias)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return fmt.Errorf("account %s: %w", alias, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete account %s: %w", alias, err)
	}
	// Delete only the revision we saw, so a concurrent re-registration is
	// not removed by mistake.
	if err := r.kv.Delete(ctx, alias, jetstream.LastRevision(e.Revision())); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("delete account %s: it was changed concurrently, look again and retry", alias)
		}
		return fmt.Errorf("delete account %s: %w", alias, err)
	}
	return nil
}

// ScrubProxyCredentials takes the proxy credentials that earlier versions
// stored in plain text out of the bucket's history of alias: when an
// earlier revision of the record holds them, every revision but the
// current one is purged (KV streams refuse the deletion of single
// messages), so a KV history or a stream read cannot bring them back. The
// current revision is left alone (Put refuses credentials, and consent
// replaces a record of an earlier version before it calls this). It needs
// the admin's right to purge, and reports how many revisions it removed.
func (r *Registry) ScrubProxyCredentials(ctx context.Context, alias string) (int, error) {
	if err := ValidateAlias(alias); err != nil {
		return 0, err
	}
	hist, err := r.kv.History(ctx, alias)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("history of account %s: %w", alias, err)
	}
	earlier := hist[:max(len(hist)-1, 0)]
	if !slices.ContainsFunc(earlier, func(e jetstream.KeyValueEntry) bool {
		var a Account
		return e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &a) == nil && ProxyHasCredentials(a.ProxyURL)
	}) {
		return 0, nil
	}
	stream, err := r.js.Stream(ctx, "KV_"+Bucket)
	if err == nil {
		err = stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+Bucket+"."+alias), jetstream.WithPurgeKeep(1))
	}
	if err != nil {
		return 0, fmt.Errorf("purging the history of account %s: %w", alias, err)
	}
	return len(earlier), nil
}

func decode(alias string, b []byte) (Account, error) {
	var a Account
	if err := json.Unmarshal(b, &a); err != nil {
		return Account{}, fmt.Errorf("account %s: stored record is not valid JSON (%v): re-register it with authtool", alias, err)
	}
	if a.Alias == "" {
		a.Alias = alias
	}
	return a, nil
}

// Change is one update of the registry seen by Watch.
type Change struct {
	Alias   string
	Deleted bool
	Account Account // when !Deleted and Err == nil
	Err     error   // the stored record does not decode
}

// Watch delivers every registered account, then every change, until ctx
// ends; then the channel is closed. Token services use it to find the
// accounts to keep refreshed.
func (r *Registry) Watch(ctx context.Context) (<-chan Change, error) {
	return kvwatch.Watch(ctx, r.kv, func(e kvwatch.Entry) Change {
		c := Change{Alias: e.Key, Deleted: e.Deleted}
		if !c.Deleted {
			c.Account, c.Err = decode(e.Key, e.Value)
		}
		return c
	})
}
