package queue_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// batchItems makes n messages for account with ids <prefix>-0, -1, ….
func batchItems(account, prefix string, n int) []queue.BatchItem {
	items := make([]queue.BatchItem, n)
	for i := range items {
		id := prefix + "-" + strconv.Itoa(i)
		items[i] = queue.BatchItem{Account: account, ID: id, Data: []byte(`{"id":"` + id + `"}`)}
	}
	return items
}

// wire records what reaches the server on mail.send.>: how many messages
// carried a batch id and how many did not.
type wire struct {
	mu              sync.Mutex
	batched, single int
}

func watchWire(t *testing.T, nc *nats.Conn) *wire {
	t.Helper()
	w := &wire{}
	sub, err := nc.Subscribe(queue.SubjectPrefix+">", func(m *nats.Msg) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if m.Header.Get("Nats-Batch-Id") != "" {
			w.batched++
		} else {
			w.single++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

func (w *wire) counts(t *testing.T, nc *nats.Conn) (batched, single int) {
	t.Helper()
	if err := nc.Flush(); err != nil { // the subscription has seen every publish made before
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.batched, w.single
}

// checkStored asserts that each result's sequence in MAIL holds its
// item.
func checkStored(t *testing.T, ctx context.Context, js jetstream.JetStream, items []queue.BatchItem, res []queue.PublishResult) {
	t.Helper()
	if len(res) != len(items) {
		t.Fatalf("%d results for %d items", len(res), len(items))
	}
	mail, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		m, err := mail.GetMsg(ctx, r.Seq)
		if err != nil {
			t.Fatalf("item %d (%s) at seq %d: %v", i, items[i].ID, r.Seq, err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) != items[i].ID || m.Subject != queue.Subject(items[i].Account) || string(m.Data) != string(items[i].Data) {
			t.Fatalf("seq %d holds %s %q %q, want item %d: %s", r.Seq, m.Subject, m.Header.Get(jetstream.MsgIDHeader), m.Data, i, items[i].ID)
		}
	}
}

// TestPublishBatchCommitsWholeBatches: 250 messages of two accounts go
// out as atomic batches (every message on the wire carries a batch id, so
// none was published on its own), each is stored once, in order, and the
// results name their sequences.
func TestPublishBatchCommitsWholeBatches(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	w := watchWire(t, env.NC)
	// 250: three batches of 83 or 84.
	items := append(batchItems("alerts", "a", 130), batchItems("reports", "r", 120)...)
	res, err := queue.PublishBatch(ctx, env.JS, items)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, ctx, env.JS, items, res)
	for i, r := range res {
		if r.Duplicate || r.Seq != uint64(i+1) {
			t.Fatalf("result %d: %+v, want seq %d, not a duplicate", i, r, i+1)
		}
	}
	if b, s := w.counts(t, env.NC); b != len(items) || s != 0 {
		t.Fatalf("on the wire: %d batched, %d single; want all %d batched", b, s, len(items))
	}
	info, err := mustStream(t, ctx, env.JS).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(len(items)) {
		t.Fatalf("MAIL holds %d messages, want %d", info.State.Msgs, len(items))
	}
}

// TestPublishBatchWithADuplicate: the server refuses a whole batch that
// holds an id it has seen; PublishBatch then publishes that batch one
// message at a time, so the duplicate is reported as one (with the
// first copy's sequence) and the others are stored.
func TestPublishBatchWithADuplicate(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	first, err := queue.Publish(ctx, env.JS, "alerts", "b-3", []byte(`{"id":"b-3"}`))
	if err != nil {
		t.Fatal(err)
	}
	w := watchWire(t, env.NC)
	items := batchItems("alerts", "b", queue.MinBatch)
	res, err := queue.PublishBatch(ctx, env.JS, items)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, ctx, env.JS, items, res)
	for i, r := range res {
		if dup := i == 3; r.Duplicate != dup {
			t.Fatalf("result %d: %+v, duplicate should be %v", i, r, dup)
		}
	}
	if res[3].Seq != first.Seq {
		t.Fatalf("duplicate reported at seq %d, first copy is at %d", res[3].Seq, first.Seq)
	}
	if b, s := w.counts(t, env.NC); b != len(items) || s != len(items) {
		t.Fatalf("on the wire: %d batched, %d single; want the batch refused, then %d single publishes", b, s, len(items))
	}
	info, err := mustStream(t, ctx, env.JS).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(len(items)) {
		t.Fatalf("MAIL holds %d messages, want %d (one publish, the rest new)", info.State.Msgs, len(items))
	}

	// The same batch again: every message is a duplicate, none stored.
	again, err := queue.PublishBatch(ctx, env.JS, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range again {
		if !r.Duplicate || r.Seq != res[i].Seq {
			t.Fatalf("republished item %d: %+v, want a duplicate of seq %d", i, r, res[i].Seq)
		}
	}
}

// TestPublishBatchIntoAnOlderMail: a MAIL made before atomic batches
// (AllowAtomicPublish off) refuses batches; PublishBatch still stores
// every message, one at a time, and EnsureStreams turns batches on.
func TestPublishBatchIntoAnOlderMail(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	s := mustStream(t, ctx, env.JS)
	cfg := s.CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	w := watchWire(t, env.NC)
	items := batchItems("alerts", "o", queue.MinBatch)
	res, err := queue.PublishBatch(ctx, env.JS, items)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, ctx, env.JS, items, res)
	if _, s := w.counts(t, env.NC); s != len(items) {
		t.Fatalf("%d single publishes after the refused batch, want %d", s, len(items))
	}

	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Config.AllowAtomicPublish {
		t.Fatal("EnsureStreams left atomic batch publish off on an older MAIL")
	}
}

// TestPublishBatchOfAFewIsPublishedSingly: below MinBatch a batch would
// cost more than it saves; the messages go one at a time.
func TestPublishBatchOfAFewIsPublishedSingly(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	w := watchWire(t, env.NC)
	items := batchItems("alerts", "s", queue.MinBatch-1)
	res, err := queue.PublishBatch(ctx, env.JS, items)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, ctx, env.JS, items, res)
	if b, s := w.counts(t, env.NC); b != 0 || s != len(items) {
		t.Fatalf("on the wire: %d batched, %d single; want %d single", b, s, len(items))
	}
}

// TestPublishBatchRefusesWhatPublishRefuses: a batch into a full MAIL is
// an error, as a single publish is, and nothing is reported stored.
func TestPublishBatchRefusesWhatPublishRefuses(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	s := mustStream(t, ctx, env.JS)
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs = queue.MinBatch - 1
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	res, perr := queue.PublishBatch(ctx, env.JS, batchItems("alerts", "f", queue.MinBatch))
	if perr == nil || len(res) != 0 {
		t.Fatalf("a batch into a MAIL that holds one message fewer: %v, %v; want an error and no results", res, perr)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("MAIL holds %d messages of a refused batch, want 0 (all or nothing)", info.State.Msgs)
	}
	if !queue.IsFull(perr) {
		t.Fatalf("a batch into a full MAIL: %v, want IsFull (SMTP 452 at the front door)", perr)
	}
}

func mustStream(t *testing.T, ctx context.Context, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
