package queue_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

func TestPublishDedupeAndDLQ(t *testing.T) {
	env := queuetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	// Idempotent: a second start must not fail.
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	r1, err := queue.Publish(ctx, env.JS, "alerts", "id-1", []byte(`{"x":1}`))
	if err != nil || r1.Duplicate {
		t.Fatalf("first publish: %+v %v", r1, err)
	}
	r2, err := queue.Publish(ctx, env.JS, "alerts", "id-1", []byte(`{"x":1}`))
	if err != nil || !r2.Duplicate || r2.Seq != r1.Seq {
		t.Fatalf("second publish must be a duplicate of seq %d: %+v %v", r1.Seq, r2, err)
	}

	cons, err := queue.EnsureConsumer(ctx, env.JS, queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.MoveToDLQ(ctx, env.JS, msg, queue.DeadLetter{ID: "id-1", Account: "alerts", Reason: "invalid message: to: no recipients", Class: "invalid"}); err != nil {
		t.Fatal(err)
	}
	// The original is gone from the work queue, the copy is in the DLQ.
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	info, _ := mail.Info(ctx)
	if info.State.Msgs != 0 {
		t.Fatalf("MAIL still holds %d messages after dead-lettering", info.State.Msgs)
	}
	dlq, _ := env.JS.Stream(ctx, queue.StreamDLQ)
	got, err := dlq.GetLastMsgForSubject(ctx, queue.DLQPrefix+"alerts")
	if err != nil {
		t.Fatal(err)
	}
	h := got.Header
	if h.Get(queue.HdrReason) != "invalid message: to: no recipients" || h.Get(queue.HdrOrigSubject) != "mail.send.alerts" ||
		h.Get(queue.HdrOrigSeq) != strconv.FormatUint(r1.Seq, 10) || h.Get(queue.HdrAttempts) != "1" ||
		h.Get(jetstream.MsgIDHeader) != "id-1:dlq" || string(got.Data) != `{"x":1}` {
		t.Fatalf("dead letter headers/data wrong: %v %q", h, got.Data)
	}
}

func TestEmbeddedConfigErrors(t *testing.T) {
	for _, c := range []queue.EmbeddedConfig{
		{Listen: "127.0.0.1:-1"},                                   // no store
		{Listen: "nonsense", StoreDir: t.TempDir()},                // no port
		{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Sync: "x"}, // bad sync
	} {
		if ns, err := queue.StartEmbedded(c); err == nil {
			ns.Shutdown()
			t.Fatalf("%+v: want an error", c)
		}
	}
}
