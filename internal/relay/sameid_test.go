package relay_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/queue"
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
