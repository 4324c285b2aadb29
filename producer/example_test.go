package producer_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/producer"
)

// The package documentation's example (the one README.md points to),
// against an embedded JetStream server standing in for relay serve's:
// the message is queued, and published again under the same id it is
// recognised as a duplicate, so it is mailed once.
func Example() {
	dir, err := os.MkdirTemp("", "producer-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	{ // what relay serve does: create the MAIL stream
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			panic(err)
		}
		js, _ := jetstream.New(nc)
		if err := queue.EnsureStreams(ctx, js, queue.StreamConfig{}); err != nil {
			panic(err)
		}
		nc.Close()
	}
	url := ns.ClientURL() // os.Getenv("RELAY_NATS_URL") in the documentation

	nc, _ := nats.Connect(url, nats.CustomInboxPrefix(producer.InboxPrefix)) // and your credentials
	defer nc.Close()
	p, _ := producer.New(nc)
	for range 2 {
		res, err := p.Publish(ctx, &producer.Message{
			ID:      "alert-7f3a", // idempotency key: publish twice, mail once
			Account: "alerts",
			To:      []string{"ops@contoso.com"},
			Subject: "CPU high on web-3",
			Text:    "load 17.2",
		})
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%s seq %d duplicate %v\n", res.ID, res.Seq, res.Duplicate)
	}
	// Output:
	// alert-7f3a seq 1 duplicate false
	// alert-7f3a seq 1 duplicate true
}
