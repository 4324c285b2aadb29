// Package queuetest starts a real embedded JetStream server for tests.
package queuetest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
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
func Start(t testing.TB) *Env {
	t.Helper()
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := queue.Connect(ns.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Server: ns, NC: nc, JS: js, URL: ns.ClientURL()}
}

// Connect opens another client connection to url, as a second process
// would, closed when the test ends.
func Connect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := queue.Connect(url, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
