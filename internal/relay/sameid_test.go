package relay_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// TestHalfDoneRequeueAfterRestartSendsOnce: a requeue is a fresh copy of
// the message (its own Nats-Msg-Id "<id>:requeue:<seq>", the id kept in
// Relay-Message-Id), its PubAck, then the original terminated. A relay
// killed between the two (or whose Term was lost with its connection)
// leaves both in MAIL, with one message id; so does a dead letter
// replayed while a half-done move left its original queued. The
// idempotency markers are to send such a message once, but they were read
// when each copy was prepared: the restarted relay fetched both together,
// read both copies' markers before either was sent, and sent the message
// twice, on two sessions at once. A second stream message with an id this
// process is already sending must wait for the first one's outcome.
func TestHalfDoneRequeueAfterRestartSendsOnce(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("half", "half@contoso.com", "contoso", func(a *account.Account) { a.MaxConns = 2 })
	// The first transaction is slow, so the copy is surely prepared while
	// it runs.
	h.fake.DelayNextData(1, time.Second)
	m := &message.Message{ID: "half-1", Account: "half", To: []string{"ops@fabrikam.com"}, Subject: "half requeue", Text: "once"}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := queue.Publish(h.ctx, h.js, "half", m.ID, b)
	if err != nil {
		t.Fatal(err)
	}
	// The requeue's copy, as queue.Requeue publishes it; the original was
	// never terminated.
	cp := &nats.Msg{Subject: queue.Subject("half"), Data: b, Header: nats.Header{}}
	cp.Header.Set(jetstream.MsgIDHeader, m.ID+":requeue:1")
	cp.Header.Set(queue.HdrMessageID, m.ID)
	if _, err := h.js.PublishMsg(h.ctx, cp); err != nil {
		t.Fatal(err)
	}
	h.waitFor("both copies gone from MAIL", func() bool {
		s, err := h.js.Stream(h.ctx, queue.StreamMail)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(h.ctx)
		return err == nil && info.State.Msgs == 0 && info.State.LastSeq > orig.Seq
	})
	if n := h.delivered()["half requeue"]; n != 1 {
		t.Fatalf("the message of a half-done requeue was delivered %d times, want once", n)
	}
}

// TestCopyTurnedAwayForItsTwinIsNotDeadLettered: a copy turned away
// because another stream message with its id is being sent here
// (errSameID) went back with a nak each time, and each time spent a
// delivery. While the other copy's transaction lasted, the copy reached
// its last delivery and then twice --max-deliver, and was dead-lettered
// ("gave up") although it was never tried. At its last delivery it is
// requeued as a fresh message instead, as a paused account's message is.
func TestCopyTurnedAwayForItsTwinIsNotDeadLettered(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
	h.enroll("twin", "twin@contoso.com", "contoso", func(a *account.Account) { a.MaxConns = 2 })
	// The original's end of DATA is held until the fake closes (first
	// thing at the test's end, before the engine stops): its transaction
	// lasts as long as the test needs.
	h.fake.DelayNextData(1, 10*time.Minute)
	t.Cleanup(func() { h.fake.Close() })
	m := &message.Message{ID: "twin-1", Account: "twin", To: []string{"ops@fabrikam.com"}, Subject: "twin", Text: "once"}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(h.ctx, h.js, "twin", m.ID, b); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the original's transaction under way", func() bool { return h.fake.DataInProgress() == 1 })
	// A second copy with the same id, as a requeue whose original's Term
	// was lost publishes it.
	cp := &nats.Msg{Subject: queue.Subject("twin"), Data: b, Header: nats.Header{}}
	cp.Header.Set(jetstream.MsgIDHeader, m.ID+":requeue:1")
	cp.Header.Set(queue.HdrMessageID, m.ID)
	ack, err := h.js.PublishMsg(h.ctx, cp)
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.js.Stream(h.ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	// Requeued (counted once the original copy is terminated) or
	// dead-lettered.
	h.waitFor("the copy's stream message gone from MAIL", func() bool {
		_, err := s.GetMsg(h.ctx, ack.Sequence)
		return errors.Is(err, jetstream.ErrMsgNotFound) && (h.outcome("twin", "requeued") >= 1 || len(h.deadLetters("twin")) > 0)
	})
	if dl := h.deadLetters("twin"); len(dl) != 0 {
		t.Fatalf("the copy, never tried, was dead-lettered: %q", dl[0].Reason)
	}
	if h.fake.DataInProgress() != 1 {
		t.Fatal("the original's transaction ended before the copy left; the test proves nothing")
	}
	if n := h.queued(); n < 2 {
		t.Fatalf("%d messages in MAIL, want the original and the copy's fresh requeue", n)
	}
	if n := h.outcome("twin", "requeued"); n < 1 {
		t.Fatalf(`outcome "requeued" %v, want the copy requeued at its last delivery`, n)
	}
}
