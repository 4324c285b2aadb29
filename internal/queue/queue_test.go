package queue_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
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

	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
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
	// The original is gone from the work queue (the Term is not
	// acknowledged, so wait for it), the copy is in the DLQ.
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	testutil.Eventually(t, ctx, "MAIL to be empty after dead-lettering", func() bool {
		info, err := mail.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	dlq, _ := env.JS.Stream(ctx, queue.StreamDLQ)
	got, err := dlq.GetLastMsgForSubject(ctx, queue.DLQPrefix+"alerts")
	if err != nil {
		t.Fatal(err)
	}
	h := got.Header
	if h.Get(queue.HdrReason) != "invalid message: to: no recipients" || h.Get(queue.HdrOrigSubject) != "mail.send.alerts" ||
		h.Get(queue.HdrOrigSeq) != strconv.FormatUint(r1.Seq, 10) || h.Get(queue.HdrAttempts) != "1" ||
		h.Get(jetstream.MsgIDHeader) != "id-1:dlq" || h.Get(queue.HdrMessageID) != "id-1" || string(got.Data) != `{"x":1}` {
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

// TestEmbeddedPortInUse: a --nats-listen port another process holds is
// reported at once with the system's reason. nats-server says it only in
// its log, which is off: relay serve waited 10 s for a server that could
// not listen and then only guessed why ("is the port in use?"), without
// the system's reason, which the error must now carry.
func TestEmbeddedPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Listen: l.Addr().String(), StoreDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		t.Fatal("started on a port in use")
	}
	if !strings.Contains(err.Error(), "--nats-listen "+l.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error %q: want --nats-listen, the address and the system's reason", err)
	}
}

// TestEmbeddedRefusesInlineOverMaxPayload: inline JSON larger than
// MaxPayload is refused by the embedded server when published, with the
// error `nats pub` prints, so one inline message cannot cost the relay
// more than a few times MaxPayload; one that fits is queued.
func TestEmbeddedRefusesInlineOverMaxPayload(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	fits := []byte(`{"x":"` + strings.Repeat("y", int(queue.MailMaxMsgSize(queue.MaxPayload))-1024) + `"}`)
	if _, err := env.JS.Publish(ctx, queue.Subject("alerts"), fits); err != nil {
		t.Fatalf("inline message under MAIL's limit: %v", err)
	}
	over := []byte(`{"x":"` + strings.Repeat("y", queue.MaxPayload) + `"}`)
	_, err := env.JS.Publish(ctx, queue.Subject("alerts"), over)
	if !errors.Is(err, nats.ErrMaxPayload) || !strings.Contains(err.Error(), "maximum payload exceeded") {
		t.Fatalf("inline message over MaxPayload: err %v, want nats.ErrMaxPayload", err)
	}
}

// TestMessageAtMAILsLimitCanBeDeadLettered: MAIL takes a message only
// with room left under max_payload for what a dead letter adds, so the
// largest message MAIL takes is dead-lettered (with a reason and a reply
// longer than any the relay writes) and requeued; one within the margin
// is refused at publish. A message that filled max_payload was queued,
// then its dead letter was refused as too large, and it stayed in MAIL
// until MaxAge dropped it unseen.
func TestMessageAtMAILsLimitCanBeDeadLettered(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	limit := int(queue.MailMaxMsgSize(queue.MaxPayload))
	frame := func(n int) []byte { return []byte(`{"x":"` + strings.Repeat("y", n-len(`{"x":""}`)) + `"}`) }
	// The Nats-Msg-Id header counts toward the limit too.
	if _, err := queue.Publish(ctx, env.JS, "alerts", "id-big", frame(queue.MaxPayload-1024)); err == nil || !strings.Contains(err.Error(), "maximum") {
		t.Fatalf("a message within the margin under max_payload: err %v, want refused by MAIL", err)
	}
	if _, err := queue.Publish(ctx, env.JS, "alerts", "id-fits", frame(limit-256)); err != nil {
		t.Fatalf("a message at MAIL's limit: %v", err)
	}
	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("why ", 4000)
	if _, err := queue.Requeue(ctx, env.JS, next(t, cons), "id-fits"); err != nil {
		t.Fatalf("requeue of a message at MAIL's limit: %v", err)
	}
	if err := queue.MoveToDLQ(ctx, env.JS, next(t, cons), queue.DeadLetter{ID: "id-fits", Account: "alerts", Reason: long, LastReply: long, Class: "invalid"}); err != nil {
		t.Fatalf("dead letter of a message at MAIL's limit: %v", err)
	}
}

func next(t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestPerAccountConsumersAndLegacyRemoval(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	// An earlier version's catch-all consumer blocks per-account ones: a
	// WorkQueue stream refuses overlapping filters.
	if _, err := env.JS.CreateOrUpdateConsumer(ctx, queue.StreamMail, jetstream.ConsumerConfig{
		Durable: queue.LegacyConsumer, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: queue.SubjectPrefix + ">",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{}); err == nil {
		t.Fatal("a per-account consumer next to the catch-all one must fail on a WorkQueue stream")
	}
	if removed, err := queue.RemoveLegacyConsumer(ctx, env.JS); err != nil || !removed {
		t.Fatalf("RemoveLegacyConsumer = %v, %v", removed, err)
	}
	if removed, err := queue.RemoveLegacyConsumer(ctx, env.JS); err != nil || removed {
		t.Fatalf("second RemoveLegacyConsumer = %v, %v; want nothing to remove", removed, err)
	}
	for _, a := range []string{"alerts", "billing"} {
		if _, err := queue.Publish(ctx, env.JS, a, "m-"+a, []byte(a)); err != nil {
			t.Fatal(err)
		}
	}
	alerts, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{MaxDeliver: 7})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureAccountConsumer(ctx, env.JS, "billing", queue.ConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
	info, err := alerts.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "relay-mail-alerts" || info.Config.FilterSubject != "mail.send.alerts" || info.Config.MaxDeliver != queue.ServerMaxDeliver || info.NumPending != 1 {
		t.Fatalf("consumer %+v", info.Config)
	}
	if m := next(t, alerts); string(m.Data()) != "alerts" {
		t.Fatalf("alerts consumer got %q", m.Data())
	}
	if err := queue.DeleteAccountConsumer(ctx, env.JS, "billing"); err != nil {
		t.Fatal(err)
	}
	if err := queue.DeleteAccountConsumer(ctx, env.JS, "billing"); err != nil {
		t.Fatalf("deleting a missing consumer: %v", err)
	}
}

func TestRequeueKeepsIDWithFreshDeliveryCount(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	if _, err := queue.Publish(ctx, env.JS, "alerts", "id-1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	cons, _ := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	m := next(t, cons)
	if err := m.NakWithDelay(0); err != nil {
		t.Fatal(err)
	}
	m = next(t, cons)
	orig, _ := m.Metadata()
	if orig.NumDelivered != 2 {
		t.Fatalf("delivered %d times", orig.NumDelivered)
	}
	res, err := queue.Requeue(ctx, env.JS, m, "id-1")
	if err != nil || res.Duplicate {
		t.Fatal(res, err)
	}
	m = next(t, cons)
	md, _ := m.Metadata()
	if md.NumDelivered != 1 || md.Sequence.Stream != res.Seq || m.Headers().Get(queue.HdrMessageID) != "id-1" ||
		m.Headers().Get(jetstream.MsgIDHeader) != "id-1:requeue:1" || string(m.Data()) != "x" {
		t.Fatalf("requeued copy: delivered %d seq %d headers %v", md.NumDelivered, md.Sequence.Stream, m.Headers())
	}
	// The copy's queue lifetime counts from the original's queueing.
	if got := queue.QueuedAt(m.Headers(), md.Timestamp); !got.Equal(orig.Timestamp) {
		t.Fatalf("requeued copy queued at %v, want the original's %v", got, orig.Timestamp)
	}
	// Term is not acknowledged by the server: wait for it to land.
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	testutil.Eventually(t, ctx, "MAIL to hold only the copy", func() bool {
		info, err := mail.Info(ctx)
		return err == nil && info.State.Msgs == 1
	})
}

func TestDeadLetterListShowReplayPurge(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	cons := map[string]jetstream.Consumer{}
	for _, a := range []string{"alerts", "billing"} {
		c, err := queue.EnsureAccountConsumer(ctx, env.JS, a, queue.ConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cons[a] = c
	}
	dead := func(account, id, reason string) {
		t.Helper()
		env.DeadLetter(t, ctx, account, id, []byte(id), queue.DeadLetter{
			ID: id, Account: account, Reason: reason, Class: "message", LastReply: "550 5.7.60 no",
		})
	}
	dead("alerts", "a1", "smtp data: 550 5.7.60 send-as")
	dead("alerts", "a2", "invalid message: to: no recipients")
	dead("billing", "b1", "smtp data: 552 5.3.4 too large")

	all, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("list all: %d %v", len(all), err)
	}
	e := all[0]
	if e.Seq != 1 || e.Account != "alerts" || e.ID != "a1" || e.Class != "message" || e.Attempts != 1 ||
		e.OrigSubject != "mail.send.alerts" || e.OrigSeq != 1 || e.LastReply != "550 5.7.60 no" ||
		e.FirstAttempt.IsZero() || e.LastAttempt.IsZero() {
		t.Fatalf("entry %+v", e)
	}
	if got, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{Account: "alerts"}); len(got) != 2 {
		t.Fatalf("--account alerts: %d", len(got))
	}
	if got, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{Reason: "NO RECIPIENTS"}); len(got) != 1 || got[0].ID != "a2" {
		t.Fatalf("--reason: %+v", got)
	}
	if got, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{Account: "nobody"}); len(got) != 0 {
		t.Fatalf("unknown account: %+v", got)
	}
	if _, err := queue.GetDeadLetter(ctx, env.JS, 99); err == nil || !strings.Contains(err.Error(), "no dead letter with sequence 99") {
		t.Fatalf("show missing: %v", err)
	}

	// Replay: a new message with a fresh count, then gone from the DLQ.
	res, err := queue.ReplayDeadLetter(ctx, env.JS, 1)
	if err != nil || res.Duplicate {
		t.Fatal(res, err)
	}
	m := next(t, cons["alerts"])
	md, _ := m.Metadata()
	if md.NumDelivered != 1 || m.Headers().Get(queue.HdrMessageID) != "a1" || m.Headers().Get(jetstream.MsgIDHeader) != "a1:replay:1" ||
		m.Headers().Get(queue.HdrReason) != "" || string(m.Data()) != "a1" {
		t.Fatalf("replayed copy: %d %v", md.NumDelivered, m.Headers())
	}
	if _, err := queue.GetDeadLetter(ctx, env.JS, 1); err == nil {
		t.Fatal("replayed dead letter still in MAIL_DLQ")
	}
	// Failing again, it is dead-lettered again, not swallowed by dedupe.
	if err := queue.MoveToDLQ(ctx, env.JS, m, queue.DeadLetter{ID: "a1", Account: "alerts", Reason: "again", Class: "message"}); err != nil {
		t.Fatal(err)
	}
	again, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{Reason: "again"})
	if len(again) != 1 || again[0].ID != "a1" || again[0].Header.Get(jetstream.MsgIDHeader) != "a1:replay:1:dlq" {
		t.Fatalf("second dead letter: %+v", again)
	}

	all, _ = queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	last := all[len(all)-1].Seq
	n, kept, err := queue.PurgeDeadLetters(ctx, env.JS, "billing", last)
	if err != nil || n != 1 || kept != 0 {
		t.Fatalf("purge billing: %d (kept %d) %v", n, kept, err)
	}
	if left, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{}); len(left) != 2 {
		t.Fatalf("after purging billing: %d left", len(left))
	}
	// A dead letter stored after the listing the purge went by stays.
	env.DeadLetter(t, ctx, "alerts", "late", []byte("{}"), queue.DeadLetter{ID: "late", Account: "alerts", Reason: "late", Class: "message"})
	if n, kept, err := queue.PurgeDeadLetters(ctx, env.JS, "", last); err != nil || n != 2 || kept != 1 {
		t.Fatalf("purge all through %d: %d (kept %d) %v", last, n, kept, err)
	}
	if left, _ := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{}); len(left) != 1 || left[0].ID != "late" {
		t.Fatalf("after purging through %d: %+v", last, left)
	}
}

// TestDeadLetterHeadersCannotBeInjected: the id, the reason and a
// multi-line SMTP reply become single header lines on the dead letter and
// on its replay; no value adds a header or splits one.
func TestDeadLetterHeadersCannotBeInjected(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	evilID := "id\r\nRelay-Class: none"
	env.DeadLetter(t, ctx, "alerts", "plain-id", []byte("{}"), queue.DeadLetter{
		ID: evilID, Account: "alerts", Class: "message",
		Reason:    "invalid message: id: \"x\r\nRelay-Attempts: 99\"",
		LastReply: "550-5.7.1 first line\r\n550 5.7.1 Relay-Reason: forged\n",
	})
	list, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	check := func(what string, h map[string][]string) {
		t.Helper()
		for k, vs := range h {
			if strings.HasPrefix(k, "Relay-Class") && len(vs) != 1 {
				t.Errorf("%s: %s has %d values", what, k, len(vs))
			}
			for _, v := range vs {
				if strings.ContainsAny(k+v, "\r\n") {
					t.Errorf("%s: header %s: %q has a line break", what, k, v)
				}
			}
		}
	}
	e := list[0]
	check("dead letter", e.Header)
	// An id's line break is written as a visible escape (like every
	// control character in an id), the others' as a space.
	if e.Class != "message" || e.Attempts != 1 || e.ID != `id\r\nRelay-Class: none` ||
		e.LastReply != "550-5.7.1 first line  550 5.7.1 Relay-Reason: forged" {
		t.Fatalf("entry %+v", e)
	}
	if _, err := queue.ReplayDeadLetter(ctx, env.JS, e.Seq); err != nil {
		t.Fatal(err)
	}
	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, cons)
	check("replay", m.Headers())
	if got := m.Headers().Get(queue.HdrMessageID); got != e.ID {
		t.Fatalf("replay id %q", got)
	}
}

// TestFullStreamIsReportedNotRetried: a MAIL stream with no room answers
// at once with an error IsFull recognises (the SMTP front door answers 452
// with it); Publish does not spin on it until its deadline as it does for a
// leader election.
func TestFullStreamIsReportedNotRetried(t *testing.T) {
	env := queuetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	if _, err := queue.Publish(ctx, env.JS, "alerts", "first", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	_, err := queue.Publish(ctx, env.JS, "alerts", "second", []byte("{}"))
	if !queue.IsFull(err) {
		t.Fatalf("second publish into a full stream: %v, want IsFull", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Publish retried a full stream until its deadline")
	}
	if !queue.NotStored(err) {
		t.Fatalf("a publish refused as full at its first attempt: %v, want NotStored", err)
	}
	if queue.IsFull(errors.New("nats: timeout")) {
		t.Fatal("IsFull took a timeout for a full stream")
	}
}

// TestMailAllowsAConsumerPerAccountBeyondTheServerDefault: nats-server
// limits a stream to 1,000 consumers unless the stream sets its own
// limit, which would leave the 1,001st account unbound. EnsureStreams sets
// MAIL's, and raises it on a stream an earlier version made without it.
func TestMailAllowsAConsumerPerAccountBeyondTheServerDefault(t *testing.T) {
	env := queuetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// MAIL as an earlier version made it: no consumer limit of its own.
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name: queue.StreamMail, Subjects: []string{queue.SubjectPrefix + ">"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, MaxAge: queue.MaxAgeFor(queue.DefaultQueueLifetime),
		Duplicates: queue.DedupeWindow, Discard: jetstream.DiscardNew,
	}); err != nil {
		t.Fatal(err)
	}
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	s, err := env.JS.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxConsumers; got != queue.MailMaxConsumers {
		t.Fatalf("MAIL MaxConsumers = %d, want %d", got, queue.MailMaxConsumers)
	}
}

// TestCopiesDropJetStreamPublishHeaders: a message keeps the headers it
// was published with, JetStream's own included: Nats-Batch-Id and
// Nats-Batch-Sequence on every message of an atomic batch (relay publish
// -f, the producer package), a Nats-Expected-* check a producer added. Its
// dead letter, requeue and replay are new publishes: carried over, those
// headers made MAIL_DLQ refuse every dead letter of batched mail
// ("atomic publish is disabled", 10174), so it could never leave MAIL and
// was dropped unseen at MaxAge, and made a requeue a batch never
// committed.
func TestCopiesDropJetStreamPublishHeaders(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	var items []queue.BatchItem
	for i := range queue.MinBatch {
		items = append(items, queue.BatchItem{Account: "alerts", ID: "b-" + strconv.Itoa(i), Data: []byte("{}")})
	}
	if _, err := queue.PublishBatch(ctx, env.JS, items); err != nil {
		t.Fatal(err)
	}
	checked := &nats.Msg{Subject: queue.Subject("alerts"), Data: []byte("{}"), Header: nats.Header{}}
	checked.Header.Set(jetstream.MsgIDHeader, "checked")
	checked.Header.Set(jetstream.ExpectedStreamHeader, queue.StreamMail)
	checked.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.Itoa(queue.MinBatch))
	if _, err := env.JS.PublishMsg(ctx, checked); err != nil {
		t.Fatal(err)
	}
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	if m, err := mail.GetMsg(ctx, 1); err != nil || m.Header.Get("Nats-Batch-Id") == "" {
		t.Fatalf("the first message was not stored as part of an atomic batch: %v %v", m, err)
	}
	clean := func(what string, h nats.Header) {
		t.Helper()
		for k := range h {
			if strings.HasPrefix(k, "Nats-") && k != jetstream.MsgIDHeader {
				t.Errorf("%s carries %s: %v", what, k, h)
			}
		}
	}
	cons, _ := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	m := next(t, cons)
	res, err := queue.Requeue(ctx, env.JS, m, "b-0")
	if err != nil {
		t.Fatalf("requeue of a batched message: %v", err)
	}
	requeued, err := mail.GetMsg(ctx, res.Seq)
	if err != nil {
		t.Fatal(err)
	}
	clean("requeued copy", requeued.Header)
	for range queue.MinBatch { // the other 15, the checked one, the requeued copy
		m := next(t, cons)
		if err := queue.MoveToDLQ(ctx, env.JS, m, queue.DeadLetter{ID: "x", Account: "alerts", Reason: "r", Class: "invalid"}); err != nil {
			t.Fatalf("dead-letter of %s: %v", m.Headers().Get(jetstream.MsgIDHeader), err)
		}
	}
	list, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	if err != nil || len(list) != queue.MinBatch {
		t.Fatalf("dead letters: %d %v, want %d", len(list), err, queue.MinBatch)
	}
	for _, e := range list {
		clean("dead letter "+strconv.FormatUint(e.Seq, 10), e.Header)
		if _, err := queue.ReplayDeadLetter(ctx, env.JS, e.Seq); err != nil {
			t.Fatalf("replay of %d: %v", e.Seq, err)
		}
	}
}

// TestListLargeDeadLettersPromptly: MAIL takes inline messages up to
// MaxPayload (8 MiB), so after an incident MAIL_DLQ can hold many of a
// megabyte or more. Listing them (relay dlq list, replay --all, purge)
// asked for up to 256 in one pull: more bytes at once than the server
// lets a client have pending (64 MiB), so it cut the connection as a slow
// consumer and each pull ended only at its 5-second expiry: the listing
// of a few hundred outlasted relay dlq's minute. Each pull is now bounded
// in bytes too.
func TestListLargeDeadLettersPromptly(t *testing.T) {
	env := queuetest.StartSync(t, "5s")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	const n = 150
	pad := strings.Repeat("a", 1<<20)
	for i := range n {
		id := "big-" + strconv.Itoa(i)
		env.DeadLetter(t, ctx, "alerts", id, []byte(`{"id":"`+id+`","text":"`+pad+`"}`), queue.DeadLetter{ID: id, Account: "alerts", Reason: "r", Class: "invalid"})
	}
	// And one as large as a dead letter can be: the bound takes it.
	huge := strings.Repeat("a", int(queue.MailMaxMsgSize(queue.MaxPayload))-4<<10)
	env.DeadLetter(t, ctx, "alerts", "huge", []byte(`{"id":"huge","text":"`+huge+`"}`), queue.DeadLetter{ID: "huge", Account: "alerts", Reason: "r", Class: "invalid"})
	start := time.Now()
	list, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	took := time.Since(start)
	if err != nil || len(list) != n+1 || list[n].ID != "huge" {
		t.Fatalf("listed %d (%v), want %d", len(list), err, n+1)
	}
	// Unbounded, the server cut the connection as a slow consumer (the
	// client reconnected) and each pull waited out its 5-second expiry:
	// the reconnects say so, where a timing would depend on the machine.
	if r := env.NC.Stats().Reconnects; r != 0 {
		t.Fatalf("listing %d dead letters of 1 MiB took %v and %d reconnects, want none", n, took, r)
	}
	t.Logf("listed %d dead letters of 1 MiB in %v", n, took)
}

// TestProducerCannotForgeDeadLetterHeaders: a producer may set any header
// on its message (nats pub -H), and a dead letter keeps the producer's
// headers. The Relay-* headers MoveToDLQ writes are the operator's view of
// why the mail failed (relay dlq show, list --json): one the dead
// letter had no value for (Relay-Last-Reply when there was no SMTP reply)
// kept the producer's, so relay dlq showed a reply the server never gave.
func TestProducerCannotForgeDeadLetterHeaders(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	forged := &nats.Msg{Subject: queue.Subject("alerts"), Data: []byte(`{"id":"f-1"}`), Header: nats.Header{}}
	forged.Header.Set(jetstream.MsgIDHeader, "f-1")
	forged.Header.Set(queue.HdrLastReply, "250 2.0.0 OK queued (relay dlq purge this)")
	forged.Header.Set(queue.HdrReason, "forged reason")
	forged.Header["relay-last-reply"] = []string{"250 spelt otherwise"} // NATS header names keep their case
	forged.Header.Set("X-Producer", "kept")
	if _, err := env.JS.PublishMsg(ctx, forged); err != nil {
		t.Fatal(err)
	}
	cons, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.MoveToDLQ(ctx, env.JS, next(t, cons), queue.DeadLetter{ID: "f-1", Account: "alerts", Reason: "invalid message: to: no recipients", Class: "invalid"}); err != nil {
		t.Fatal(err)
	}
	e, err := queue.GetDeadLetter(ctx, env.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	if e.LastReply != "" || e.Header.Get(queue.HdrLastReply) != "" || e.Reason != "invalid message: to: no recipients" || len(e.Header.Values(queue.HdrReason)) != 1 {
		t.Fatalf("dead letter shows the producer's headers: last reply %q, reason %q, headers %v", e.LastReply, e.Reason, e.Header)
	}
	for k := range e.Header {
		if strings.EqualFold(k, queue.HdrLastReply) {
			t.Fatalf("dead letter keeps the producer's %s: %v", k, e.Header)
		}
	}
	if e.Header.Get("X-Producer") != "kept" {
		t.Fatalf("the producer's own header was dropped: %v", e.Header)
	}
}

// TestQueuedAtTrustsOnlyTheRelaysCopies: Relay-Queued moves a message's
// expiry and its Date. It counts on the copies the relay queues (Requeue,
// RequeueRecipients), never on a producer's message, and never when it
// is later than the copy's own storing.
func TestQueuedAtTrustsOnlyTheRelaysCopies(t *testing.T) {
	stored := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	early := stored.Add(-3 * time.Hour)
	hdr := func(kv ...string) nats.Header {
		h := nats.Header{queue.HdrQueued: {early.Format(time.RFC3339Nano)}}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, tt := range []struct {
		name string
		hdr  nats.Header
		want time.Time
	}{
		{"requeue", hdr(jetstream.MsgIDHeader, "id-1:requeue:42", queue.HdrMessageID, "id-1"), early},
		{"copy for recipients refused for now", hdr(jetstream.MsgIDHeader, "id-1:rcpts:0123456789abcdef", queue.HdrMessageID, "id-1"), early},
		{"producer's message", hdr(jetstream.MsgIDHeader, "id-1"), stored},
		{"producer's message without an id", hdr(), stored},
		{"another message's requeue id", hdr(jetstream.MsgIDHeader, "id-2:requeue:42", queue.HdrMessageID, "id-1"), stored},
		{"a dead letter published again", hdr(jetstream.MsgIDHeader, "id-1:requeue:42:dlq", queue.HdrMessageID, "id-1"), stored},
		{"a dead letter of refused recipients", hdr(jetstream.MsgIDHeader, "id-1:rcpts:0:dlq", queue.HdrMessageID, "id-1"), stored},
		{"in the future", nats.Header{queue.HdrQueued: {stored.Add(time.Hour).Format(time.RFC3339Nano)},
			jetstream.MsgIDHeader: {"id-1:requeue:42"}, queue.HdrMessageID: {"id-1"}}, stored},
	} {
		if got := queue.QueuedAt(tt.hdr, stored); !got.Equal(tt.want) {
			t.Errorf("%s: QueuedAt = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A replay whose deadline runs out while it prepares the copy (a slow
// body store), with the dead letter purged meanwhile: the check whether
// the dead letter is still there is made with a fresh context, and the
// replay says it is gone (ErrNoDeadLetter), not "kept". Asked with the
// expired context, the check failed and the purged dead letter was
// reported as kept in MAIL_DLQ.
func TestReplayPastItsDeadlineTellsAPurgedDeadLetterGone(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	if _, err := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
	env.DeadLetter(t, ctx, "alerts", "p1", []byte("p1"), queue.DeadLetter{ID: "p1", Account: "alerts", Reason: "smtp data: 451 4.3.0 later", Class: "transient"})
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := queue.ReplayDeadLetterWith(rctx, env.JS, 1, func(queue.DeadLetterEntry) ([]byte, error) {
		if purged, _, err := queue.PurgeDeadLetters(ctx, env.JS, "", 1); err != nil || purged != 1 {
			t.Fatalf("purge: %d purged, %v", purged, err)
		}
		<-rctx.Done() // the store is slow: the replay's deadline runs out
		return nil, rctx.Err()
	})
	if !errors.Is(err, queue.ErrNoDeadLetter) || strings.Contains(err.Error(), "kept") {
		t.Fatalf("replay of a dead letter purged while its deadline ran out: %v; want ErrNoDeadLetter", err)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("MAIL holds %d, want nothing queued", n)
	}
}

// TestRequeueKeepsQueuedAtOfAnIDEndingInSpace: a message id may end in
// white space (message.Validate refuses only control characters); the
// headers the relay sets are trimmed (setHeader), so the requeued copy's
// Relay-Message-Id is the id without it and its Nats-Msg-Id keeps it
// before ":requeue:". The copy is still the relay's own: its lifetime
// counts from the original's queueing, or a paused account's message
// started a fresh lifetime at every requeue and never expired.
func TestRequeueKeepsQueuedAtOfAnIDEndingInSpace(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	const id = "id-1 "
	if _, err := queue.Publish(ctx, env.JS, "alerts", id, []byte("x")); err != nil {
		t.Fatal(err)
	}
	cons, _ := queue.EnsureAccountConsumer(ctx, env.JS, "alerts", queue.ConsumerConfig{})
	m := next(t, cons)
	orig, _ := m.Metadata()
	for i := range 2 { // a requeue, and a requeue of the copy
		if _, err := queue.Requeue(ctx, env.JS, m, id); err != nil {
			t.Fatal(err)
		}
		m = next(t, cons)
		md, _ := m.Metadata()
		if got := queue.QueuedAt(m.Headers(), md.Timestamp); !got.Equal(orig.Timestamp) {
			t.Fatalf("requeue %d: copy queued at %v, want the original's %v (headers %v)", i+1, got, orig.Timestamp, m.Headers())
		}
	}
}
