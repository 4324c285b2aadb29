// Package roles says who may do what on the NATS bus. It is the one
// definition of the four roles outside the relay itself — producer,
// worker, tokens, admin — with the subjects each may publish and
// subscribe to, and its own reply prefix. The embedded server enforces
// these permissions on the nkey seeds the relay writes for each role, and
// deploy/nats/auth.conf spells the same lists for an external server (a
// test parses that file and compares). docs/design.md §8 explains them.
//
// The lists are explicit allow lists: no role but admin has the JetStream
// API as a wildcard, so no worker or token credential can create or
// update a stream (a mirror of relay_tokens, a source with a subject
// transform into relay_accounts), purge or delete one, or read a bucket
// it has no business with. Replies go to a prefix per role (RFC-less NATS
// practice: a custom inbox prefix) that only that role may subscribe to,
// because replies carry access tokens (to workers), dead letters and
// sealed records (to admins).
package roles

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"relay365/internal/cli"
	"relay365/internal/queue"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Role is a kind of client of the relay's NATS.
type Role string

const (
	Producer Role = "producer" // hands mail over: relay publish, relay sendmail, the Go package, nats pub
	Worker   Role = "worker"   // relay serve --roles workers: delivery and the SMTP front door
	Tokens   Role = "tokens"   // relay serve --roles tokens: the token service
	Admin    Role = "admin"    // authtool, relay dlq, relay producer, relay setup: the operator
)

// All lists the roles in a stable order.
var All = []Role{Producer, Worker, Tokens, Admin}

// Names of the streams and buckets the roles are granted (each package
// owns its constant; roles_test checks these equal them).
const (
	streamMail      = "MAIL"
	streamDLQ       = "MAIL_DLQ"
	bucketAccounts  = "relay_accounts"
	bucketTokens    = "relay_tokens"
	bucketSent      = "relay_sent"
	bucketPacing    = "relay_pacing"
	bucketProducers = "relay_producers"
	bucketBodies    = "relay_bodies"
	streamBodies    = "OBJ_" + bucketBodies
	limitsRequests  = "relay.v1.limits.*"
	limitsService   = "relay-limits"
	tokensService   = "relay-tokens"
)

// InboxPrefix is where the role's replies go; only the role may subscribe
// there.
func (r Role) InboxPrefix() string {
	switch r {
	case Worker:
		return "_INBOX_relay_workers"
	case Tokens:
		return "_INBOX_relay_tokens"
	default:
		return "_INBOX_" + string(r)
	}
}

// User is the role's user name in deploy/nats/auth.conf.
func (r Role) User() string {
	switch r {
	case Worker:
		return "relay-worker"
	case Tokens:
		return "relay-tokens"
	case Admin:
		return "relay-admin"
	}
	return string(r)
}

// kvRead is what reading a KV bucket takes: its info (opening it), a get
// (direct, or through the stream API on servers without direct get), and
// a watch or key listing (an ordered consumer, deleted when it stops).
func kvRead(bucket string) []string {
	s := "KV_" + bucket
	return []string{
		"$JS.API.STREAM.INFO." + s,
		"$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.STREAM.MSG.GET." + s,
		"$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DELETE." + s + ".>",
	}
}

// kvWrite adds putting values (compare-and-set included: a header).
func kvWrite(bucket string) []string {
	return append(kvRead(bucket), "$KV."+bucket+".>")
}

func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// Permissions are the role's publish and subscribe allow lists.
func (r Role) Permissions() *server.Permissions {
	inbox := r.InboxPrefix() + ".>"
	switch r {
	case Producer:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				"mail.send.>",
				// a large message's body: stored in relay_bodies
				// (chunks, then its metadata; body.Put looks nothing
				// up); never read back, listed, purged or deleted. No
				// direct get of metadata, not even by name: a subject
				// ending in a wildcard ("….M.>") is taken as the key
				// and answers the newest body's metadata, its random
				// name included, and knowing a name a producer may
				// publish a deletion marker as its metadata
				// (TestProducerCannotFindAndDeleteAnotherBody). No
				// stream info either: asked with a subjects filter it
				// lists every metadata subject, each a body's name
				// (TestProducerCannotFindAndDeleteAnotherBody); body.OpenStoreOnly
				// asks nothing.
				"$O." + bucketBodies + ".C.>", "$O." + bucketBodies + ".M.>",
				// an account's size limit, asked of the workers: the
				// answer holds that and the alias, nothing else
				limitsRequests,
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}
	case Worker:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: concat([]string{
				"$JS.API.INFO",
				"$JS.API.STREAM.INFO." + streamMail, "$JS.API.STREAM.INFO." + streamDLQ,
				// its consumers on MAIL (one per account, the sweeper's)
				"$JS.API.CONSUMER.CREATE." + streamMail + ".>",
				"$JS.API.CONSUMER.INFO." + streamMail + ".>",
				"$JS.API.CONSUMER.MSG.NEXT." + streamMail + ".>",
				"$JS.API.CONSUMER.DELETE." + streamMail + ".>",
				// a paused account's expired mail: read, then delete after its dead letter
				"$JS.API.STREAM.MSG.GET." + streamMail, "$JS.API.STREAM.MSG.DELETE." + streamMail,
				"$JS.ACK." + streamMail + ".>", // acks, naks, heartbeats, terms
				"$JS.FC.>",                     // flow control of its watches
				"mail.send.>",                  // a requeue, and the SMTP front door
				"mail.dlq.>",                   // dead letters
				"token.get", "token.refresh", "token.status", "token.smtp_refused",
				// dead letters read by the body sweeper
				"$JS.API.STREAM.MSG.GET." + streamDLQ,
				// relay_bodies: stored (the SMTP front door), read,
				// deleted after the ack, orphans swept
				"$JS.API.STREAM.INFO." + streamBodies,
				"$JS.API.DIRECT.GET." + streamBodies + ".>",
				"$JS.API.STREAM.MSG.GET." + streamBodies,
				"$JS.API.STREAM.PURGE." + streamBodies,
				"$JS.API.CONSUMER.CREATE." + streamBodies, "$JS.API.CONSUMER.CREATE." + streamBodies + ".>",
				"$JS.API.CONSUMER.DELETE." + streamBodies + ".>", "$JS.API.CONSUMER.MSG.NEXT." + streamBodies + ".>",
				"$O." + bucketBodies + ".>",
			}, kvRead(bucketAccounts), kvRead(bucketProducers), kvWrite(bucketSent), kvWrite(bucketPacing))},
			// the relay-limits service: its endpoint and micro's
			// discovery of it, answered through allow_responses (only to
			// reply inboxes: internal/limits)
			Subscribe: &server.SubjectPermission{Allow: []string{inbox, "relay.events.token.stored",
				limitsRequests, "$SRV.*", "$SRV.*." + limitsService, "$SRV.*." + limitsService + ".>"}},
			Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
		}
	case Tokens:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: concat([]string{
				"$JS.API.INFO",
				"$JS.FC.>",
				"relay.events.>",
			}, kvRead(bucketAccounts), kvWrite(bucketTokens))},
			// its endpoints, micro's discovery, its replies; it answers
			// requests through allow_responses, with no publish right on
			// anyone's inbox.
			// Discovery only of its own service (relay-tokens): "$SRV.>"
			// let it answer $SRV.INFO.relay-limits as the limits service.
			Subscribe: &server.SubjectPermission{Allow: []string{"token.>", "$SRV.*", "$SRV.*." + tokensService, "$SRV.*." + tokensService + ".>", inbox}},
			Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
		}
	case Admin:
		// The operator: streams and buckets (relay setup), accounts and
		// sealed tokens (authtool, which refreshes in process with the
		// key), producers, dead letters and their replay. Only its own
		// replies, and no token.* request: it never needs a live access
		// token from the token service. relay dlq purge deletes the
		// bodies of the dead letters it purges (and relay dlq replay
		// copies them: the chunks and metadata of a new object), and a
		// delete writes a deletion marker as the object's metadata, a
		// publish on
		// $O.relay_bodies.M.<name> (body.Store.Delete): no right the
		// JetStream API does not already give it (a purge of the bucket).
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				"$JS.API.>", "$KV.>", "$JS.ACK.>", "$JS.FC.>", "mail.send.>",
				"$O." + bucketBodies + ".>",
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}
	}
	return &server.Permissions{Publish: &server.SubjectPermission{}, Subscribe: &server.SubjectPermission{}}
}

// SeedFile is where the relay keeps the role's nkey seed for clients on
// its host: <dataDir>/nkeys/<role>.nk.
func SeedFile(dataDir string, r Role) string {
	return filepath.Join(dataDir, "nkeys", string(r)+".nk")
}

// EnsureSeeds makes an nkey user seed for every role in dataDir (mode
// 0600, in a 0700 folder) unless one is there, and returns the roles' NATS
// users for the embedded server: each public key with its permissions.
func EnsureSeeds(dataDir string) ([]*server.NkeyUser, error) {
	if err := os.MkdirAll(filepath.Join(dataDir, "nkeys"), 0o700); err != nil {
		return nil, fmt.Errorf("nkeys folder: %w", err)
	}
	var users []*server.NkeyUser
	for _, r := range All {
		kp, err := seed(SeedFile(dataDir, r))
		if err != nil {
			return nil, err
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, err
		}
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: r.Permissions()})
	}
	return users, nil
}

// seed reads the seed in file, or makes one there.
func seed(file string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		kp, err := nkeys.FromSeed(trimSpace(b))
		if err != nil {
			// The error is nkeys' own and never holds the seed.
			return nil, fmt.Errorf("%s does not hold an nkey user seed: %w", file, err)
		}
		return kp, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	s, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", file, err)
	}
	if _, err := f.Write(append(s, '\n')); err != nil {
		f.Close()
		return nil, err
	}
	return kp, f.Close()
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// Internal is a user of the relay's own process on its embedded server,
// made anew at every start and never written down: it may do everything,
// as the relay itself is the one party trusted with all of it.
func Internal() (*server.NkeyUser, nkeys.KeyPair, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, nil, err
	}
	return &server.NkeyUser{Nkey: pub}, kp, nil
}

// Default readies a client of role r: it names the role's seed in
// dataDir when o names no other way to authenticate and the seed is there
// (a command on the relay's own host, so the README's commands need no
// credentials flag), and the role's reply prefix when o names none (which
// is also what deploy/nats/auth.conf expects of an external server).
func Default(o *queue.ConnectOptions, dataDir string, r Role) {
	if !o.HasAuth() && dataDir != "" {
		if f := SeedFile(dataDir, r); fileExists(f) {
			o.NKeyFile = f
		}
	}
	if o.InboxPrefix == "" {
		o.InboxPrefix = r.InboxPrefix()
	}
}

// Connect connects a command (authtool, relay dlq, relay publish...) as
// role r: the options readied by Default, then refused before any dial if
// no connection could use them (a URL that does not parse, credential
// flags that do not fit: cli.UsageError, exit 2), and a failed dial
// answered with what to do (queue.ConnectHint). extra options come after
// the relay's own and so win.
func Connect(url, name string, o queue.ConnectOptions, dataDir string, r Role, extra ...nats.Option) (*nats.Conn, error) {
	Default(&o, dataDir, r)
	if err := queue.CheckURL(url); err != nil {
		return nil, cli.UsageError{Err: fmt.Errorf("--nats-url: %w", err)}
	}
	// Options, not only Validate: a seed, password or token file that
	// cannot be used is the caller's to fix, not a server to look for.
	if _, err := o.Options(); err != nil {
		return nil, cli.UsageError{Err: err}
	}
	nc, err := queue.ConnectWith(url, name, o, extra...)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, queue.ConnectHint(err))
	}
	return nc, nil
}

func fileExists(name string) bool {
	st, err := os.Stat(name)
	return err == nil && st.Mode().IsRegular()
}
