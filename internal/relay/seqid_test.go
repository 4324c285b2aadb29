package relay_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"relay365/internal/message"
	"relay365/internal/queue"
)

// TestForgedFallbackIDDoesNotSuppressMail: a message published without
// any id (a bare `nats pub`) gets the idempotency key the worker derives
// for it. That key was "seq-<stream sequence>", and stream sequences are
// consecutive: a producer that published a message of its own with the
// id "seq-<the next sequence>" had the next id-less message acked as
// "already sent (idempotency marker)" without being sent — its mail lost
// without a dead letter (and, while both were in flight, held back by the
// per-process claim on the id). The derived key must not be one another
// producer can name in advance.
func TestForgedFallbackIDDoesNotSuppressMail(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("a", "a@contoso.com", "contoso", nil)
	s, err := h.js.Stream(h.ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The forger's message, with the key the next message would get.
	forged := &message.Message{ID: fmt.Sprintf("seq-%d", info.State.LastSeq+2), Account: "a", To: []string{"ops@fabrikam.com"}, Subject: "forger", Text: "x"}
	b, err := json.Marshal(forged)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(h.ctx, h.js, "a", forged.ID, b); err != nil {
		t.Fatal(err)
	}
	victim := &message.Message{Account: "a", To: []string{"ops@fabrikam.com"}, Subject: "victim", Text: "y"}
	vb, err := json.Marshal(victim)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := h.js.PublishMsg(h.ctx, &nats.Msg{Subject: queue.Subject("a"), Data: vb})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("seq-%d", ack.Sequence); want != forged.ID {
		t.Fatalf("the id-less message is stream message %d, the forged id %s: the test did not set up the collision", ack.Sequence, forged.ID)
	}
	h.waitFor("both messages delivered", func() bool {
		d := h.delivered()
		return d["forger"] == 1 && d["victim"] == 1 && h.queued() == 0
	})
}
