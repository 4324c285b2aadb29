package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/kvwatch"
	"relay365/internal/queue"
)

// Bucket is the KV bucket holding one sealed Record per account alias.
const Bucket = "relay_tokens"

// bucketHistory is 1: the bucket keeps only each account's current
// record. An earlier revision holds an earlier refresh token (which
// Microsoft does not revoke when it issues the next) sealed under
// whatever key was current then, so after a key rotation it would stay
// readable to whoever holds the retired key. Nothing reads older
// revisions: the refresh lease's compare-and-set and WaitChange need only
// the current revision. A bucket made with more history is brought to 1
// (and its older revisions dropped by the server) when it is opened by
// someone allowed to change it (the relay on its embedded server, relay
// setup, authtool).
const bucketHistory = 1

// State is the health of an account's tokens.
type State string

const (
	// StateHealthy: tokens work (or a transient failure happened while the
	// access token is still valid).
	StateHealthy State = "healthy"
	// StateNeedsConsent: the refresh token is dead or a person must sign in
	// (MFA, conditional access, consent). Only authtool login clears it.
	StateNeedsConsent State = "needs_consent"
	// StateConfigError: the app registration, secret or tenant is wrong.
	// Only an operator fix (authtool app/login) clears it.
	StateConfigError State = "config_error"
	// StateTransient: the last refresh failed temporarily and no valid
	// access token is left; refreshes are retried with backoff.
	StateTransient State = "transient"
)

// Blocking reports whether the state stops all refreshes until a new
// record is written by consent.
func (s State) Blocking() bool { return s == StateNeedsConsent || s == StateConfigError }

var (
	// ErrNotFound is wrapped when no record is stored for an account.
	ErrNotFound = errors.New("no tokens stored")
	// ErrConflict is wrapped by Update when the record changed since the
	// revision given (compare-and-set lost).
	ErrConflict = errors.New("token record changed concurrently")
	// ErrRefreshInProgress is wrapped when a caller needing a token waited
	// SourceConfig.LeaseWait for another process's refresh and its lease
	// still holds: temporary, try again (the token service answers 503).
	ErrRefreshInProgress = errors.New("token refresh in progress elsewhere, try again shortly")
	// ErrReplayed (which wraps ErrOpen) is wrapped when a record opens but
	// carries an older generation, at a newer revision, than one this
	// Store has already seen for the account: a sealed value captured
	// earlier and written back (SECURITY.md).
	ErrReplayed = fmt.Errorf("token record replayed (an older generation written back over a newer one): %w", ErrOpen)
)

// Record is what the token store keeps per account. It is sealed as a whole
// before it reaches the bucket. Printing it with fmt redacts the secrets.
type Record struct {
	Account      string    `json:"account"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	AccessToken  string    `json:"access_token,omitempty"`
	Expiry       time.Time `json:"expiry"`
	Scopes       []string  `json:"scopes,omitempty"`
	TokenURL     string    `json:"token_url"`
	ClientSecret string    `json:"client_secret,omitempty"` // app-only accounts
	LastRefresh  time.Time `json:"last_refresh"`
	State        State     `json:"state"`
	LastError    string    `json:"last_error,omitempty"` // AADSTS code + remedy, never secrets
	FailCount    int       `json:"fail_count,omitempty"`

	// ErrorName and ErrorCodes are the identity platform's error and
	// error_codes of the last failure, so a blocked account's typed error
	// can be rebuilt without calling the platform again.
	ErrorName  string `json:"error,omitempty"`
	ErrorCodes []int  `json:"error_codes,omitempty"`
	// NextAttempt is the earliest time of the next refresh after a
	// transient failure (backoff shared by all processes).
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// LeaseOwner/LeaseUntil mark a refresh in progress somewhere in the
	// cluster; others wait for its result instead of spending the same
	// refresh token. The expiry is inside the value because per-key TTLs
	// do not survive Update.
	LeaseOwner string    `json:"lease_owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`

	// Binding is where the tokens may be used (SMTP endpoint, its CA
	// file, the app's client id), copied from the account at consent;
	// workers refuse an account record that disagrees (binding.go).
	// Records of earlier versions have none until the token service
	// binds them to the account record as it finds it (Source.load).
	Binding Binding `json:"binding,omitzero"`
	// ProxyURL is the account's proxy for identity platform calls as
	// given at consent, credentials included; relay_accounts keeps only
	// its credential-free form (account.RedactProxy). Only the token
	// service uses it.
	ProxyURL string `json:"proxy_url,omitempty"`
	// SMTPRefused is the issued time (LastRefresh) of an access token the
	// SMTP server refused right after a forced refresh (MarkSMTPRefused);
	// while it equals LastRefresh the record's EffectiveState is
	// needs_consent.
	SMTPRefused time.Time `json:"smtp_refused,omitzero"`

	// Generation counts the record's writes: every Put and Update stores
	// one more than the newest generation the writer has seen of the
	// account, and the sealing authenticates it. A Store that has seen
	// generation g at revision r refuses a value of an older generation at
	// a newer revision (ErrReplayed). 0: written by an earlier version.
	Generation uint64 `json:"generation,omitempty"`

	// KeyID is the id of the key the loaded value was sealed with (set by
	// Get; not stored).
	KeyID string `json:"-"`
}

// String describes the record without secrets (the proxy URL without its
// credentials).
func (r Record) String() string {
	return fmt.Sprintf("token.Record{account=%s state=%s expiry=%s last_refresh=%s fail_count=%d refresh_token=%s access_token=%s client_secret=%s smtp_addr=%s client_id=%s proxy=%s key=%s}",
		r.Account, r.State, r.Expiry.Format(time.RFC3339), r.LastRefresh.Format(time.RFC3339), r.FailCount,
		redacted(r.RefreshToken), redacted(r.AccessToken), redacted(r.ClientSecret), r.Binding.SMTPAddr, r.Binding.ClientID,
		account.RedactProxy(r.ProxyURL), r.KeyID)
}

// Format makes every fmt verb (%v, %+v, %#v, %s, %d, ...) print String.
func (r Record) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(r.String())) }

// MarshalZerologObject logs the record's metadata only, so
// log.Interface("rec", rec) cannot write the tokens.
func (r Record) MarshalZerologObject(e *zerolog.Event) {
	e.Str("account", r.Account).Str("state", string(r.State)).Time("expiry", r.Expiry).
		Time("last_refresh", r.LastRefresh).Int("fail_count", r.FailCount).Str("key_id", r.KeyID).
		Str("smtp_addr", r.Binding.SMTPAddr).Str("client_id", r.Binding.ClientID).Str("proxy", account.RedactProxy(r.ProxyURL))
}

func redacted(s string) string {
	if s == "" {
		return "none"
	}
	return "[REDACTED]"
}

// Store keeps sealed token records in the relay_tokens bucket. Values are
// sealed with the key ring's current key and the additional data
// "relay_tokens/<account>", so a value copied under another key does not
// open. It is safe for concurrent use.
type Store struct {
	kv   jetstream.KeyValue
	keys *Keyring

	// seen is, per account, the newest generation opened or written by
	// this Store and its revision: the memory that refuses a replay.
	// leases is, per account, the lease this Store last read and when it
	// first read it, on now (LeaseEnd).
	seenMu sync.Mutex
	seen   map[string]seenGen
	leases map[string]leaseSight
	now    func() time.Time
}

type leaseSight struct {
	owner string
	at    time.Time
}

type seenGen struct {
	gen, rev uint64
}

// OpenStore creates the bucket if needed, or brings an existing one to the
// settings below (file storage, history 1).
func OpenStore(ctx context.Context, js jetstream.JetStream, keys *Keyring) (*Store, error) {
	if keys == nil {
		return nil, errors.New("open token store: no key ring")
	}
	kv, err := openBucket(ctx, js)
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv, keys: keys, seen: map[string]seenGen{}, leases: map[string]leaseSight{}, now: time.Now}, nil
}

// EnsureBucket makes the bucket (relay setup does, as the admin, for the
// token service that may only read and write it).
func EnsureBucket(ctx context.Context, js jetstream.JetStream) error {
	_, err := openBucket(ctx, js)
	return err
}

func openBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := queue.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Relay365 OAuth tokens, AES-256-GCM sealed",
		History:     bucketHistory,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	return kv, nil
}

// Keyring returns the store's key ring.
func (s *Store) Keyring() *Keyring { return s.keys }

// NeedsReseal reports whether a record sealed with keyID should be written
// again under the current key (after a key rotation).
func (s *Store) NeedsReseal(keyID string) bool { return keyID != s.keys.CurrentID() }

func aadFor(acct string) []byte { return []byte(Bucket + "/" + acct) }

// Get loads and opens the record of acct with its revision. A missing
// record wraps ErrNotFound; one that does not open wraps ErrOpen (and
// ErrUnknownKey when its key is missing from the key file). Record.KeyID
// tells which key sealed it; see NeedsReseal.
func (s *Store) Get(ctx context.Context, acct string) (Record, uint64, error) {
	if err := account.ValidateAlias(acct); err != nil {
		return Record{}, 0, err
	}
	e, err := s.kv.Get(ctx, acct)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		s.sawDeletion(acct)
		return Record{}, 0, notFound(acct)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("read tokens of account %s: %w", acct, err)
	}
	rec, err := s.decode(acct, e.Value(), e.Revision())
	return rec, e.Revision(), err
}

func notFound(acct string) error {
	return fmt.Errorf("account %s: %w (run: authtool login --account %s)", acct, ErrNotFound, acct)
}

// decode opens the value stored for acct at revision rev and checks its
// generation against the newest this Store has seen (admit).
func (s *Store) decode(acct string, sealed []byte, rev uint64) (Record, error) {
	pt, keyID, err := s.keys.Open(aadFor(acct), sealed)
	if err != nil {
		return Record{}, fmt.Errorf("cannot open sealed record for account %s: %w", acct, err)
	}
	defer clear(pt)
	var rec Record
	if err := json.Unmarshal(pt, &rec); err != nil {
		// The JSON error text could quote plaintext: do not include it.
		return Record{}, fmt.Errorf("sealed record for account %s opened but does not decode: %w", acct, ErrOpen)
	}
	if rec.Account != acct {
		return Record{}, fmt.Errorf("cannot open sealed record for account %s: it names account %q: %w", acct, rec.Account, ErrOpen)
	}
	rec.KeyID = keyID
	if err := s.admit(acct, rec.Generation, rev); err != nil {
		return Record{}, err
	}
	s.sawLease(acct, rec.LeaseOwner)
	return rec, nil
}

// setClock makes the Store time its lease sightings on now (the Source's
// clock).
func (s *Store) setClock(now func() time.Time) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	s.now = now
}

// sawLease notes the lease acct's record holds as read now: the first
// time a lease is read is kept until another (or none) is read.
func (s *Store) sawLease(acct, owner string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	switch cur, ok := s.leases[acct]; {
	case owner == "":
		delete(s.leases, acct)
	case !ok || cur.owner != owner:
		s.leases[acct] = leaseSight{owner: owner, at: s.now()}
	}
}

// leaseSeenAt is when this Store first read the lease owner holds on
// acct's record; false if the lease it read last is another.
func (s *Store) leaseSeenAt(acct, owner string) (time.Time, bool) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	cur, ok := s.leases[acct]
	return cur.at, ok && cur.owner == owner
}

// admit records that acct's record of generation gen was seen at revision
// rev, or refuses it as replayed: a newer revision with an older
// generation than one seen means someone wrote back an earlier sealed
// value (only the admin can write the bucket besides the token services
// and consent, and they all count generations up). A stale read (an
// older revision, as a lagging replica's direct get can answer) is not a
// replay and changes nothing. Generation 0 is a record of an earlier
// version, written by a replica not yet upgraded: accepted, so rolling
// upgrades work (and replays of such records are not detected).
func (s *Store) admit(acct string, gen, rev uint64) error {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	cur := s.seen[acct]
	switch {
	case rev <= cur.rev:
		return nil // stale or the same read
	case gen != 0 && gen < cur.gen:
		return fmt.Errorf("cannot use the token record of account %s: generation %d at revision %d, but generation %d was seen at revision %d: %w (run: authtool login --account %s)",
			acct, gen, rev, cur.gen, cur.rev, ErrReplayed, acct)
	}
	s.seen[acct] = seenGen{gen: max(gen, cur.gen), rev: rev}
	return nil
}

// forget drops what was seen of acct: its record was deleted, and a new
// consent starts counting again.
func (s *Store) forget(acct string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	delete(s.seen, acct)
	delete(s.leases, acct)
}

// sawDeletion notes that acct's record was read deleted or purged: its
// lease is gone, but the newest generation seen is kept. A deletion seen
// is not this Store's own (Delete), and may be the first half of a replay:
// the NATS administrator deletes the record, waits for the token services
// to see it gone, then writes back a value captured earlier. Forgetting
// the generation there would admit it. A new consent needs no reset: Put
// stores it above the bucket's last revision, above every generation
// written before (TestStoreRefusesAReplayAfterADeletion).
func (s *Store) sawDeletion(acct string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	delete(s.leases, acct)
}

// nextGeneration is the generation of a write replacing rec, stored at
// revision rev: one more than rec's, the newest seen, and rev. Counting
// from the revision replaced keeps generations rising along the bucket's
// history whoever writes, so a consent written over a replayed record by
// a process that never saw the newer generations (authtool) still
// outranks every generation written before the replay.
func (s *Store) nextGeneration(rec Record, rev uint64) uint64 {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	return max(rec.Generation, s.seen[rec.Account].gen, rev) + 1
}

func (s *Store) encode(rec Record) ([]byte, error) {
	if err := account.ValidateAlias(rec.Account); err != nil {
		return nil, fmt.Errorf("token record: %w", err)
	}
	if rec.State == "" {
		rec.State = StateHealthy
	}
	pt, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode tokens of account %s: %w", rec.Account, err)
	}
	defer clear(pt)
	sealed, err := s.keys.Seal(aadFor(rec.Account), pt)
	if err != nil {
		return nil, fmt.Errorf("seal tokens of account %s: %w", rec.Account, err)
	}
	return sealed, nil
}

// Put seals rec under the current key and stores it unconditionally (the
// consent step). It returns the new revision. Its generation follows the
// stored record's, whatever rec says, so a token service that has seen
// that one accepts it.
func (s *Store) Put(ctx context.Context, rec Record) (uint64, error) {
	if err := account.ValidateAlias(rec.Account); err != nil {
		return 0, fmt.Errorf("token record: %w", err)
	}
	// The floor: the record replaced, or after a deletion, which leaves no
	// record to read, the bucket's last revision (the admin's consent may
	// read the stream's info), above every generation written before.
	rec.Generation = 0
	var floor uint64
	if e, err := s.kv.Get(ctx, rec.Account); err == nil {
		floor = e.Revision()
		if cur, err := s.decode(rec.Account, e.Value(), floor); err == nil {
			rec.Generation = cur.Generation
		}
	}
	if st, err := s.kv.Status(ctx); err == nil {
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
			floor = max(floor, bs.StreamInfo().State.LastSeq)
		}
	}
	rec.Generation = s.nextGeneration(rec, floor)
	b, err := s.encode(rec)
	if err != nil {
		return 0, err
	}
	nrev, err := s.kv.Put(ctx, rec.Account, b)
	if err != nil {
		return 0, fmt.Errorf("store tokens of account %s: %w", rec.Account, err)
	}
	s.forget(rec.Account) // consent starts afresh: whatever was seen before
	_ = s.admit(rec.Account, rec.Generation, nrev)
	return nrev, nil
}

// Update seals rec under the current key and stores it only if the stored
// revision is still rev (compare-and-set). A lost race wraps ErrConflict.
func (s *Store) Update(ctx context.Context, rec Record, rev uint64) (uint64, error) {
	rec.Generation = s.nextGeneration(rec, rev)
	b, err := s.encode(rec)
	if err != nil {
		return 0, err
	}
	nrev, err := s.kv.Update(ctx, rec.Account, b, rev)
	if err != nil {
		if queue.CASLost(err) {
			return 0, fmt.Errorf("update tokens of account %s at revision %d: %w (%v)", rec.Account, rev, ErrConflict, err)
		}
		return 0, fmt.Errorf("update tokens of account %s: %w", rec.Account, err)
	}
	_ = s.admit(rec.Account, rec.Generation, nrev)
	return nrev, nil
}

// Delete removes the account's tokens including the bucket's history of
// sealed values (purge). Deleting a missing record is not an error.
func (s *Store) Delete(ctx context.Context, acct string) error {
	if err := account.ValidateAlias(acct); err != nil {
		return err
	}
	if err := s.kv.Purge(ctx, acct); err != nil {
		return fmt.Errorf("delete tokens of account %s: %w", acct, err)
	}
	s.forget(acct)
	return nil
}

// Aliases lists the accounts that have a token record, sorted; an empty
// bucket gives an empty list. Records without a registered account (left by
// an interrupted tool) are listed too, so key rotation misses nothing.
func (s *Store) Aliases(ctx context.Context) ([]string, error) {
	keys, err := s.kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, fmt.Errorf("list token records: %w", err)
	}
	if err := ctx.Err(); err != nil { // Keys stops early, without an error, when ctx ends
		return nil, fmt.Errorf("list token records: %w", err)
	}
	return append([]string{}, keys...), nil
}

// RawGet returns the stored sealed bytes (tests prove no plaintext leaks).
func (s *Store) RawGet(ctx context.Context, acct string) ([]byte, error) {
	e, err := s.kv.Get(ctx, acct)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, notFound(acct)
	}
	if err != nil {
		return nil, fmt.Errorf("read tokens of account %s: %w", acct, err)
	}
	return e.Value(), nil
}

// Reseal rewrites the record under the current key if it was sealed with
// an older one (used after a key rotation). It reports whether it wrote.
func (s *Store) Reseal(ctx context.Context, acct string) (bool, error) {
	rec, rev, err := s.Get(ctx, acct)
	if err != nil {
		return false, err
	}
	if !s.NeedsReseal(rec.KeyID) {
		return false, nil
	}
	if _, err := s.Update(ctx, rec, rev); err != nil {
		return false, err
	}
	return true, nil
}

// WaitChange blocks until the record of acct has a revision above
// afterRev and returns it, or until ctx ends. A deletion wraps ErrNotFound.
// It uses a KV watch, so no polling.
func (s *Store) WaitChange(ctx context.Context, acct string, afterRev uint64) (Record, uint64, error) {
	if err := account.ValidateAlias(acct); err != nil {
		return Record{}, 0, err
	}
	w, err := s.kv.Watch(ctx, acct)
	if err != nil {
		return Record{}, 0, fmt.Errorf("watch tokens of account %s: %w", acct, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return Record{}, 0, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				if err := ctx.Err(); err != nil {
					return Record{}, 0, err
				}
				return Record{}, 0, fmt.Errorf("watch tokens of account %s: watcher closed", acct)
			}
			if e == nil || e.Revision() <= afterRev {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				s.sawDeletion(acct)
				return Record{}, e.Revision(), notFound(acct)
			}
			rec, err := s.decode(acct, e.Value(), e.Revision())
			return rec, e.Revision(), err
		}
	}
}

// Update is one change of the relay_tokens bucket seen by Watch.
type Update struct {
	Account  string
	Revision uint64
	Deleted  bool   // the record was deleted or purged
	Record   Record // the opened record, when !Deleted and Err == nil
	Err      error  // the value does not open (wrong key, moved, tampered)
	Initial  bool   // found when the watch started, not changed while it watched
}

// Watch delivers every stored record, then every change, until ctx ends;
// then the channel is closed. Token services use it to keep gauges and
// refresh schedules current without polling.
func (s *Store) Watch(ctx context.Context) (<-chan Update, error) {
	return kvwatch.Watch(ctx, s.kv, func(e kvwatch.Entry) Update {
		u := Update{Account: e.Key, Revision: e.Revision, Deleted: e.Deleted, Initial: e.Initial}
		if u.Deleted {
			s.sawDeletion(e.Key)
		} else {
			u.Record, u.Err = s.decode(e.Key, e.Value, e.Revision)
		}
		return u
	})
}
