package relay_test

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/queue"
	"relay365/internal/relay"
)

// One stream message, one handler: JetStream hands a message out again
// while a handler of this process still has it when its AckWait runs out
// unrenewed or when its consumer is made anew. The second delivery must
// not be sent, acked, nak'ed or dead-lettered beside the first: the first
// handler's outcome stands.

// TestRedeliveryWhileDeadLetteringIsNotSent: a message refused for good is
// being dead-lettered, and MAIL_DLQ does not answer (as while its leader is
// elected): the publish is retried past AckWait, and JetStream delivers the
// message again. That delivery must not send the message the first one is
// dead-lettering.
func TestRedeliveryWhileDeadLetteringIsNotSent(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{AckWait: time.Second}})
	h.enroll("slowdlq", "slowdlq@contoso.com", "contoso.onmicrosoft.com", nil)
	if err := h.js.DeleteStream(h.ctx, queue.StreamDLQ); err != nil {
		t.Fatal(err)
	}
	h.fake.SetNextMailReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "refused"})
	h.publish("slowdlq", "dl-1", "refused for good")
	h.waitFor("a second delivery while the dead letter waits", func() bool { return deliveries(t, h, "slowdlq") >= 2 })
	// Sent by the second delivery (the fault), or left alone by it: then
	// JetStream delivers it once more after another AckWait.
	h.waitFor("the second delivery to end", func() bool {
		return h.delivered()["refused for good"] > 0 || deliveries(t, h, "slowdlq") >= 3
	})
	if err := queue.EnsureStreams(h.ctx, h.js, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the dead letter stored and the original gone", func() bool {
		return h.queued() == 0 && len(h.deadLetters("slowdlq")) == 1
	})
	if n := h.delivered()["refused for good"]; n != 0 {
		t.Errorf("the message was sent %d times while its first delivery dead-lettered it", n)
	}
	if sent, dl := h.outcome("slowdlq", "sent"), h.outcome("slowdlq", "dead_lettered"); sent != 0 || dl != 1 {
		t.Errorf("outcomes sent %v, dead_lettered %v; want 0 and 1", sent, dl)
	}
}

// TestConsumerMadeAnewUnderALaneDoesNotSendTwice: an account removed and
// added again while its old lane still finishes a transaction. The new
// lane binds the account's consumer; the old lane, once done, deletes it
// (engine.apply), and the new lane makes it again, from the stream's first
// message: the message the new lane is sending is delivered to it a second
// time, with no marker yet.
func TestConsumerMadeAnewUnderALaneDoesNotSendTwice(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("again", "again@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.DelayNextData(1, 4*time.Second)
	h.publish("again", "again-1", "before removal")
	h.waitFor("the first message in its transaction", func() bool { return h.fake.DataInProgress() == 1 })
	if err := h.accounts.Delete(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the old lane gone", func() bool {
		for _, l := range h.engine.Status() {
			if l.Account == "again" {
				return false
			}
		}
		return true
	})
	if err := h.accounts.Put(h.ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := h.engine.WaitBound(h.ctx, "again"); err != nil {
		t.Fatal(err)
	}
	h.fake.DelayNextData(1, 10*time.Second)
	h.publish("again", "again-2", "after re-adding")
	h.waitFor("both transactions held at once (the old lane's still running)", func() bool { return h.fake.DataInProgress() == 2 })
	// The old lane's transaction ends, the consumer is deleted and made
	// anew, and again-2 is delivered once more while its first delivery
	// is still in its transaction. Everything ended: both transactions
	// answered, nothing queued, nothing held by the lane.
	h.waitFor("every transaction ended and nothing queued", func() bool {
		return h.fake.DataInProgress() == 0 && h.queued() == 0 && h.lane("again").InFlight == 0
	})
	for subject, n := range h.delivered() {
		if n != 1 {
			t.Errorf("%q delivered %d times", subject, n)
		}
	}
	if n := h.delivered()["after re-adding"]; n != 1 {
		t.Errorf("again-2 delivered %d times, want 1", n)
	}
	// The old lane's end leaves the new lane its consumer and its series.
	const kept, deleted = "account added again before its removal ended; its consumer is kept", "binding the consumer again"
	h.waitFor("the old lane's removal to end", func() bool {
		logs := h.logs.String()
		return strings.Contains(logs, kept) || strings.Contains(logs, deleted)
	})
	if strings.Contains(h.logs.String(), deleted) {
		t.Error("the new lane's consumer was deleted under it")
	}
	if _, ok := h.series("relay_account_paused", "account", "again"); !ok {
		t.Error("relay_account_paused of the re-added account was dropped with the old lane")
	}
}
