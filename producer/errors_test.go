package producer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

func alert(id string) *producer.Message {
	return &producer.Message{ID: id, Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "CPU high on web-3", Text: "load 17.2"}
}

// kind is how a caller outside this module classifies a Publish error,
// with nothing but the producer package's exports and the standard
// library: an invalid message and one too large are never worth
// retrying; a full queue, a cancelled context and a NATS that does not
// answer are.
func kind(err error) string {
	var inv *producer.Invalid
	var tl *producer.TooLarge
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &inv):
		return "invalid"
	case errors.As(err, &tl):
		return "too large"
	case errors.Is(err, producer.ErrQueueFull):
		return "full"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	}
	return fmt.Sprintf("unclassified %T", err)
}

// Each failure a monitoring tool meets is told apart through the
// wrapping, by Publish and PublishBatch alike: an invalid message, one
// over the size limit, a full MAIL (MaxMsgs, then MaxBytes), a cancelled
// context, a stopped server.
func TestPublishErrorsTellRetryFromInvalid(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what, want string, err error) {
		t.Helper()
		if got := kind(err); got != want {
			t.Errorf("%s: %q is %s, want %s", what, err, got, want)
		}
	}

	bad := alert("bad-1")
	bad.To = []string{"not an address"}
	_, err = p.Publish(ctx, bad)
	check("Publish, bad address", "invalid", err)
	if inv := (*producer.Invalid)(nil); errors.As(err, &inv) && inv.Field != "to" {
		t.Errorf("Invalid.Field = %q, want to", inv.Field)
	}
	_, err = p.PublishBatch(ctx, []*producer.Message{alert("ok-1"), bad})
	check("PublishBatch, bad address", "invalid", err)

	small, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	small.MaxSize = 1 << 10
	big := alert("big-1")
	big.Text = strings.Repeat("x", 4<<10)
	_, err = small.Publish(ctx, big)
	check("Publish, over MaxSize", "too large", err)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.Publish(cctx, alert("cancelled-1"))
	check("Publish, cancelled context", "cancelled", err)
	if n := queued(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d queued after the failures, want 0", n)
	}

	closed, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	pc, err := producer.New(closed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Publish(ctx, alert("closed-1")); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Errorf("Publish on a closed connection: %v, want nats.ErrConnectionClosed", err)
	}

	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	if _, err := p.Publish(ctx, alert("first")); err != nil {
		t.Fatal(err)
	}
	_, err = p.Publish(ctx, alert("second"))
	check("Publish, MAIL at MaxMsgs", "full", err)
	if strings.Contains(err.Error(), "is relay serve running") {
		t.Errorf("a full queue is not a missing relay: %q", err)
	}
	batch := make([]*producer.Message, 20)
	for i := range batch {
		batch[i] = alert(fmt.Sprintf("batch-%d", i))
	}
	_, err = p.PublishBatch(ctx, batch)
	check("PublishBatch, MAIL at MaxMsgs", "full", err)

	info := queuetest.StreamInfo(t, ctx, env.JS, queue.StreamMail)
	// Room for a few octets more than the one message queued: not for another.
	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = -1; c.MaxBytes = int64(info.State.Bytes) + 16 })
	_, err = p.Publish(ctx, alert("third"))
	check("Publish, MAIL at MaxBytes", "full", err)

	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	dctx, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	_, err = p.Publish(dctx, alert("down-1"))
	check("Publish, server stopped", "timed out", err)
}

// Publishing on a connection the caller closed fails at once with
// nats.ErrConnectionClosed and says the connection is closed, not that
// relay serve may be down or its MAIL stream missing: nothing on the
// relay's side would help.
func TestPublishOnClosedConnectionSaysSo(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	nc, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	for what, publish := range map[string]func() error{
		"Publish":      func() error { _, err := p.Publish(ctx, alert("closed-1")); return err },
		"PublishBatch": func() error { _, err := p.PublishBatch(ctx, []*producer.Message{alert("closed-2")}); return err },
	} {
		err := publish()
		if !errors.Is(err, nats.ErrConnectionClosed) || strings.Contains(err.Error(), "is relay serve running") {
			t.Errorf("%s on a closed connection: %v; want nats.ErrConnectionClosed, without blaming relay serve", what, err)
		}
	}
}
