package daemon_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

// TestPushConsumerCannotDeliverIntoAStream: a role that may create a
// consumer on a stream it may write (a worker on relay_sent, the token
// service on relay_tokens) chooses the consumer's deliver subject, and no
// subject permission sees it: the server delivers as itself. Delivered
// onto a subject a stream stores, what the role wrote where it may would
// land where it may not (a worker rewriting an account, the token service
// queueing mail). It does not: a stream's own subscription is no
// delivery interest, so the consumer never delivers. SECURITY.md's
// "rewriting an account" (worker) and "queueing mail" (tokens), tried
// through the JetStream API. If this test fails, the server has started
// to deliver push consumers into streams: no permission can refuse it,
// so the roles' consumer rights must be narrowed or SECURITY.md told.
func TestPushConsumerCannotDeliverIntoAStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	for _, tc := range []struct {
		role    roles.Role
		bucket  string // where the role may write
		deliver string // where it may not
		target  string // the stream that stores deliver
	}{
		{roles.Worker, "relay_sent", "$KV." + account.Bucket + ".alerts", "KV_" + account.Bucket},
		{roles.Tokens, token.Bucket, queue.SubjectPrefix + "alerts", queue.StreamMail},
	} {
		p := newProber(t, url, tc.role, as[tc.role])
		stream := "KV_" + tc.bucket
		req, _ := json.Marshal(map[string]any{"stream_name": stream, "config": map[string]any{
			"durable_name": "deliver-elsewhere", "deliver_subject": tc.deliver, "ack_policy": "none", "deliver_policy": "all"}})
		m, err := p.nc.Request("$JS.API.CONSUMER.CREATE."+stream+".deliver-elsewhere", req, 5*time.Second)
		if err != nil {
			t.Fatalf("a %s creates a consumer on %s: %v", tc.role, stream, err)
		}
		var created struct {
			Error *struct{ Description string } `json:"error"`
		}
		if json.Unmarshal(m.Data, &created) != nil || created.Error != nil {
			t.Logf("a %s's push consumer on %s delivering to %s is refused: %s", tc.role, stream, tc.deliver, m.Data)
			continue
		}
		target, err := adminJS.Stream(ctx, tc.target)
		if err != nil {
			t.Fatal(err)
		}
		before, err := target.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(p.nc)
		kv, err := js.KeyValue(ctx, tc.bucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "alerts", []byte(`{"alias":"alerts","smtp_addr":"evil.example:587"}`)); err != nil {
			t.Fatal(err)
		}
		st, err := adminJS.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		c, err := st.PushConsumer(ctx, "deliver-elsewhere")
		if err != nil {
			t.Fatal(err)
		}
		// The consumer has the message to deliver; it delivers nothing.
		var info *jetstream.ConsumerInfo
		testutil.Eventually(t, ctx, "the consumer to see the message", func() bool {
			info, err = c.Info(ctx)
			return err == nil && info.NumPending+info.Delivered.Stream >= 1
		})
		if info.PushBound || info.Delivered.Stream != 0 {
			t.Errorf("a %s's consumer on %s delivers onto %s (bound %v, delivered %d)", tc.role, stream, tc.deliver, info.PushBound, info.Delivered.Stream)
		}
		after, err := target.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.State.LastSeq != before.State.LastSeq {
			t.Errorf("a %s wrote into %s through a consumer delivering onto %s", tc.role, tc.target, tc.deliver)
		}
	}
}

// TestWorkerCannotForgeTokenStored: a worker may not publish token
// events (attacks), but the subject is one workers listen on, so a push
// consumer of its own (on relay_sent, which it writes) delivering there
// is delivered, with the stream's subject ($KV.relay_sent.…) as the
// message's. A worker's token client hears only what was published on
// relay.events.token.stored itself: the forged event wakes no watcher.
func TestWorkerCannotForgeTokenStored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	victim := newProber(t, url, roles.Worker, as[roles.Worker])
	client := tokensvc.NewClient(tokensvc.ClientConfig{NC: victim.nc})
	forged, err := client.WatchStored(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := client.WatchStored(ctx, "beta")
	if err != nil {
		t.Fatal(err)
	}
	_ = victim.nc.Flush()

	p := newProber(t, url, roles.Worker, as[roles.Worker])
	req, _ := json.Marshal(map[string]any{"stream_name": "KV_relay_sent", "config": map[string]any{
		"durable_name": "forge", "deliver_subject": tokensvc.SubjectStored, "ack_policy": "none", "deliver_policy": "all"}})
	if _, err := p.nc.Request("$JS.API.CONSUMER.CREATE.KV_relay_sent.forge", req, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(p.nc)
	sent, err := js.KeyValue(ctx, "relay_sent")
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := json.Marshal(tokensvc.Event{Account: "alerts"})
	if _, err := sent.Put(ctx, "forged", ev); err != nil {
		t.Fatal(err)
	}
	st, err := adminJS.Stream(ctx, "KV_relay_sent")
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.PushConsumer(ctx, "forge")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the forged event to be delivered", func() bool {
		info, err := c.Info(ctx)
		return err == nil && info.Delivered.Stream >= 1
	})
	// The token service's own event comes after it on the same
	// subscription: once it is heard, the forged one was handled.
	tokens := newProber(t, url, roles.Tokens, as[roles.Tokens])
	own, _ := json.Marshal(tokensvc.Event{Account: "beta"})
	if err := tokens.nc.Publish(tokensvc.SubjectStored, own); err != nil {
		t.Fatal(err)
	}
	select {
	case <-genuine:
	case <-ctx.Done():
		t.Fatal("the token service's own token.stored was not heard")
	}
	select {
	case <-forged:
		t.Fatal("a worker's push consumer forged token.stored: the account's watcher woke")
	default:
	}
}
