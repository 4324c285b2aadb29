package queue_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// consumerMeta returns the file the server keeps an account consumer's
// configuration in. nats-server replaces it (a temporary file renamed
// over it) on every create or update of the consumer, so a new file
// means the consumer was written again.
func consumerMeta(t *testing.T, env *queuetest.Env, alias string) os.FileInfo {
	t.Helper()
	pattern := filepath.Join(env.Server.StoreDir(), "*", "streams", queue.StreamMail, "obs", queue.AccountConsumer(alias), "meta.inf")
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) != 1 {
		t.Fatalf("consumer meta files %q: %v; want one for %s", files, err, pattern)
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// A relay restarting with thousands of accounts binds each existing
// consumer by its info; only a missing or changed one is written.
func TestEnsureAccountConsumerBindsAnUnchangedOneWithoutWriting(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	if _, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
	created := consumerMeta(t, env, "alerts")

	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cons.CachedInfo().Config.FilterSubject; got != queue.Subject("alerts") {
		t.Fatalf("bound consumer filters %q", got)
	}
	if !os.SameFile(created, consumerMeta(t, env, "alerts")) {
		t.Fatal("binding an unchanged consumer wrote its configuration again")
	}

	// A changed setting (relay serve restarted with another --ack-wait)
	// still updates it.
	cons, err = queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{AckWait: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.AckWait != 90*time.Second {
		t.Fatalf("AckWait %v after the update; want 1m30s", info.Config.AckWait)
	}
	if os.SameFile(created, consumerMeta(t, env, "alerts")) {
		t.Fatal("the update did not write the consumer's configuration: this test cannot see a write")
	}
}

// A consumer made by an earlier version, with the delivery limit on the
// server, is updated to none: the worker counts deliveries itself, and a
// server limit would strand a message whose last delivery could not end
// it (docs/design.md §7.5).
func TestEnsureAccountConsumerLiftsAServerDeliveryLimit(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	old := jetstream.ConsumerConfig{
		Durable: queue.AccountConsumer("alerts"), AckPolicy: jetstream.AckExplicitPolicy,
		MaxDeliver: 50, FilterSubject: queue.Subject("alerts"),
	}
	if _, err := env.JS.CreateOrUpdateConsumer(ctx, queue.StreamMail, old); err != nil {
		t.Fatal(err)
	}
	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{MaxDeliver: 50})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxDeliver != queue.ServerMaxDeliver {
		t.Fatalf("MaxDeliver on the server %d, want %d (none)", info.Config.MaxDeliver, queue.ServerMaxDeliver)
	}
}
