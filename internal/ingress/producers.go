package ingress

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/argon2"

	"relay365/internal/kvwatch"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// ProducersBucket is the KV bucket of SMTP producer identities
// (docs/design.md §4): one key per producer name, the password only as an
// argon2id hash.
const ProducersBucket = "relay_producers"

// ErrNoProducer: no producer of that name is registered.
var ErrNoProducer = errors.New("no such producer")

// Producer is one identity that may submit mail over SMTP (AUTH) through
// the accounts it lists. It holds no password, only its hash.
type Producer struct {
	Name     string    `json:"name"`
	Accounts []string  `json:"accounts"`
	Hash     string    `json:"hash"` // PHC string: $argon2id$v=19$m=…,t=…,p=…$salt$key
	Created  time.Time `json:"created"`
}

// May reports whether the producer may send through account alias.
func (p Producer) May(alias string) bool { return slices.Contains(p.Accounts, alias) }

// Argon2id parameters: RFC 9106 §4's second recommended option is 64 MiB;
// OWASP's minimum (19 MiB, 2 passes) keeps a burst of logins — and a
// password guesser — from costing the relay hundreds of megabytes, and
// Server verifies at most a few at once and caches a success.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	saltLen      = 16
)

// HashPassword returns the PHC string of an argon2id hash of password
// with a fresh salt.
func HashPassword(password string) string {
	salt := make([]byte, saltLen)
	_, _ = rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// CheckPassword reports whether password matches a HashPassword string.
// The comparison takes the same time whatever the mismatch.
func CheckPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var version int
	var memory, passes uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &passes, &threads); err != nil || passes == 0 || threads == 0 || memory > 1<<20 {
		return false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	key, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, passes, memory, threads, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1
}

// NewPassword returns a random password of 32 characters, A–Z and 2–7
// (base32 of 160 random bits), for `relay producer add` without
// --password-file and the sandbox. Letters and digits only: a password
// pasted after a command-line flag must not begin with "-" (swaks, whose
// --auth-password takes an optional argument, reads "--auth-password -x…"
// as an unknown option -x…, even as --auth-password=-x…), and none of
// these characters means anything to a shell, YAML, an ini file or a URL.
func NewPassword() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return base32.StdEncoding.EncodeToString(b)
}

// ValidName reports whether name can name a producer (and so be a KV key
// and a metric label): the same rule as an account alias.
func ValidName(name string) bool { return message.ValidAccount(name) }

// Producers is the producer registry on KV relay_producers.
type Producers struct {
	kv     jetstream.KeyValue
	leader *queue.LeaderReader
}

// OpenProducers creates the bucket if needed.
func OpenProducers(ctx context.Context, js jetstream.JetStream) (*Producers, error) {
	kv, err := queue.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      ProducersBucket,
		Description: "Relay365 SMTP producer identities (argon2id password hashes)",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open producer bucket %s: %w", ProducersBucket, err)
	}
	return &Producers{kv: kv, leader: queue.NewLeaderReader(js, ProducersBucket)}, nil
}

// ErrProducerChanged: another run stored or removed the same producer
// between Put's read and its write; nothing was stored.
var ErrProducerChanged = errors.New("changed by another run at the same time; nothing stored (run it again)")

// Put stores (or replaces) producer name with its accounts and the hash
// of password. The write is a compare-and-set against what Put read
// first, so of two runs for one name at the same moment only one stores
// its password and the other fails with ErrProducerChanged (both would
// otherwise print a password, and only the later one would work).
func (p *Producers) Put(ctx context.Context, name string, accounts []string, password string) (Producer, error) {
	switch {
	case !ValidName(name):
		return Producer{}, fmt.Errorf("producer name %q: use lower-case letters, digits, '-' and '_' (at most 63)", name)
	case len(accounts) == 0:
		return Producer{}, errors.New("a producer needs at least one account (--accounts A,B)")
	case len(password) < 12:
		return Producer{}, errors.New("the password is shorter than 12 characters")
	}
	for _, a := range accounts {
		if !message.ValidAccount(a) {
			return Producer{}, fmt.Errorf("account %q is not an account alias", a)
		}
	}
	// From the stream leader, as Get: a stale revision would only lose
	// the compare-and-set (ErrProducerChanged), but need not.
	var rev uint64 // 0: no producer of that name (Create; a removed one's marker included)
	switch _, r, found, err := p.leader.Last(ctx, name); {
	case err != nil:
		return Producer{}, fmt.Errorf("read producer %s: %w", name, err)
	case found:
		rev = r
	}
	pr := Producer{Name: name, Accounts: firstOfEach(accounts), Hash: HashPassword(password), Created: time.Now().UTC()}
	b, _ := json.Marshal(pr)
	var err error
	if rev == 0 {
		_, err = p.kv.Create(ctx, name, b)
	} else {
		_, err = p.kv.Update(ctx, name, b, rev)
	}
	switch {
	case queue.CASLost(err):
		return Producer{}, fmt.Errorf("producer %s: %w", name, ErrProducerChanged)
	case err != nil:
		return Producer{}, fmt.Errorf("store producer %s: %w", name, err)
	}
	return pr, nil
}

// firstOfEach is accounts with each alias once, where it first appears:
// the order is the operator's (`--accounts a,b,a` stores a, b).
func firstOfEach(accounts []string) []string {
	seen := make(map[string]bool, len(accounts))
	out := make([]string, 0, len(accounts))
	for _, a := range accounts {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// Get reads one producer, from the bucket's stream leader, never by a
// direct get (queue.LeaderReader): the front door asks here when its copy
// of the registry does not have name, at AUTH and before each MAIL and
// DATA of a session (stillValid), so after a producer's removal. A
// replica restarted after an outage, not yet caught up, would answer a
// direct get with the record removed while it was down, and the removed
// producer's password would log in again (SECURITY.md; docs/design.md
// §7.10).
func (p *Producers) Get(ctx context.Context, name string) (Producer, error) {
	if !ValidName(name) {
		return Producer{}, fmt.Errorf("%w: %q", ErrNoProducer, name)
	}
	v, _, found, err := p.leader.Last(ctx, name)
	switch {
	case err != nil:
		return Producer{}, fmt.Errorf("read producer %s: %w", name, err)
	case !found:
		return Producer{}, fmt.Errorf("%w: %s", ErrNoProducer, name)
	}
	return decodeProducer(v)
}

// List returns every producer, by name.
func (p *Producers) List(ctx context.Context) ([]Producer, error) {
	lister, err := p.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list producers: %w", err)
	}
	var out []Producer
	for name := range lister.Keys() {
		pr, err := p.Get(ctx, name)
		if errors.Is(err, ErrNoProducer) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, pr)
	}
	slices.SortFunc(out, func(a, b Producer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Remove deletes producer name: new AUTH fails at once, and sessions that
// authenticated before are refused their next MAIL or DATA (454 4.7.0)
// once the front door's copy of the registry has seen the removal.
func (p *Producers) Remove(ctx context.Context, name string) error {
	if _, err := p.Get(ctx, name); err != nil {
		return err
	}
	if err := p.kv.Purge(ctx, name); err != nil {
		return fmt.Errorf("remove producer %s: %w", name, err)
	}
	return nil
}

func decodeProducer(b []byte) (Producer, error) {
	var pr Producer
	if err := json.Unmarshal(b, &pr); err != nil {
		return pr, fmt.Errorf("producer record does not decode: %w", err)
	}
	return pr, nil
}

// watch delivers every producer change (deletions with Deleted set) until
// ctx ends; the Server keeps a copy in memory with it.
func (p *Producers) watch(ctx context.Context) (<-chan kvwatch.Entry, error) {
	return kvwatch.Watch(ctx, p.kv, func(e kvwatch.Entry) kvwatch.Entry { return e })
}
