// Package queuetest starts a real embedded JetStream server for tests.
package queuetest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/roles"
)

// Env is one embedded server and a client connected to it.
type Env struct {
	Server *server.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	URL    string
}

// Start runs a JetStream server with its store in t.TempDir() on a free
// loopback port; everything is shut down when the test ends.
func Start(t testing.TB) *Env { return StartSync(t, "always") }

// StartSync is Start with the server's fsync policy: "always" (what
// production does), or an interval such as "5s" for tests that publish
// and ack thousands of messages on shared cores.
func StartSync(t testing.TB, sync string) *Env {
	t.Helper()
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, js := connect(t, ns.ClientURL())
	return &Env{Server: ns, NC: nc, JS: js, URL: ns.ClientURL()}
}

// Connect opens another client connection to url, as a second process
// would, closed when the test ends.
func Connect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	_, js := connect(t, url)
	return js
}

func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return opened(t)(queue.Connect(url, "test"))
}

// opened takes a connection made (or its error) for the test: closed when
// the test ends, with JetStream on it.
func opened(t testing.TB) func(*nats.Conn, error) (*nats.Conn, jetstream.JetStream) {
	return func(nc *nats.Conn, err error) (*nats.Conn, jetstream.JetStream) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}
}

// StartMail is Start plus the MAIL and MAIL_DLQ streams, and a context
// that ends with the test (or after two minutes: a deadline against a
// test that hangs, not a time the test must keep; TestDLQFloodHoldsOnePull
// took 52 s under -race on a loaded machine and hit the old 30 s).
func StartMail(t testing.TB) (*Env, context.Context) {
	t.Helper()
	env := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return env, ctx
}

// DeadLetter queues data for account under id and dead-letters it the way
// the worker does (its consumer hands it out, MoveToDLQ copies and ends
// it). The streams must exist.
func (e *Env) DeadLetter(t testing.TB, ctx context.Context, account, id string, data []byte, dl queue.DeadLetter) {
	t.Helper()
	if _, err := queue.Publish(ctx, e.JS, account, id, data); err != nil {
		t.Fatal(err)
	}
	cons, err := queue.EnsureAccountConsumer(ctx, e.JS, account, queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.MoveToDLQ(ctx, e.JS, msg, dl); err != nil {
		t.Fatal(err)
	}
}

// StreamInfo is stream's configuration and state now.
func StreamInfo(t testing.TB, ctx context.Context, js jetstream.JetStream, stream string) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Msgs is how many messages stream holds now.
func Msgs(t testing.TB, ctx context.Context, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	return StreamInfo(t, ctx, js, stream).State.Msgs
}

// LimitStream changes stream's configuration with f (a test's full
// queue: MaxMsgs, MaxBytes) and applies it.
func LimitStream(t testing.TB, ctx context.Context, js jetstream.JetStream, stream string, f func(*jetstream.StreamConfig)) {
	t.Helper()
	cfg := StreamInfo(t, ctx, js, stream).Config
	f(&cfg)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// RoleServer is an embedded server that admits only the relay's roles
// (roles.EnsureSeeds, their seeds in Dir as in the relay's data
// directory), as relay serve's is.
type RoleServer struct {
	Server *server.Server
	URL    string
	Dir    string
}

// StartRoles starts a RoleServer, shut down when the test ends.
func StartRoles(t testing.TB) *RoleServer { return StartRolesWithoutDirectGet(t) }

// StartRolesWithoutDirectGet starts a RoleServer on which no role may
// make a direct get ($JS.API.DIRECT.GET) of the streams named, so a read
// of them succeeds only if it asks the stream leader (queue.LeaderReader,
// docs/design.md §7.10). One server holds the only replica, so a test
// cannot make a replica stale; it shows where the read goes.
func StartRolesWithoutDirectGet(t testing.TB, streams ...string) *RoleServer {
	t.Helper()
	dir := t.TempDir()
	users, err := roles.EnsureSeeds(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		for _, u := range users {
			u.Permissions.Publish.Deny = append(u.Permissions.Publish.Deny, "$JS.API.DIRECT.GET."+s, "$JS.API.DIRECT.GET."+s+".>")
		}
	}
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Users: users})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return &RoleServer{Server: ns, URL: ns.ClientURL(), Dir: dir}
}

// As connects as role r (its seed and inbox prefix), as that role's
// process would; closed when the test ends.
func (s *RoleServer) As(t testing.TB, r roles.Role) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return ConnectAs(t, s.URL, "test-"+string(r), queue.ConnectOptions{NKeyFile: roles.SeedFile(s.Dir, r), InboxPrefix: r.InboxPrefix()})
}

// ConnectAs connects to url as name with o's credentials, as another
// process would; closed when the test ends.
func ConnectAs(t testing.TB, url, name string, o queue.ConnectOptions) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return opened(t)(queue.ConnectWith(url, name, o))
}
