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
// server, is replaced by one with none, and a message the old one had
// stopped delivering (its deliveries spent) is delivered again: an update
// alone lifts the limit but leaves that message unseen (docs/design.md
// §7.5).
func TestEnsureAccountConsumerReplacesAServerDeliveryLimit(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	old, err := env.JS.CreateOrUpdateConsumer(ctx, queue.StreamMail, jetstream.ConsumerConfig{
		Durable: queue.AccountConsumer("alerts"), AckPolicy: jetstream.AckExplicitPolicy,
		MaxDeliver: 2, FilterSubject: queue.Subject("alerts"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(ctx, env.JS, "alerts", "m-1", []byte("stranded")); err != nil {
		t.Fatal(err)
	}
	fetch := func(c jetstream.Consumer) jetstream.Msg {
		b, err := c.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			return m
		}
		return nil
	}
	for range 2 {
		m := fetch(old)
		if m == nil {
			t.Fatal("the old consumer did not deliver its message")
		}
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	if m := fetch(old); m != nil {
		t.Fatal("delivered a third time with MaxDeliver 2: the test cannot see the strand")
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
	m := fetch(cons)
	if m == nil || string(m.Data()) != "stranded" {
		t.Fatalf("after the replacement: %v, want the stranded message delivered again", m)
	}
}
