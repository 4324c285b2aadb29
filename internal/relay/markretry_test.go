package relay_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue/queuetest"
	"relay365/internal/relay"
)

// TestMarkerWriteIsTriedAgainBeforeTheAck: a marker write refused for a
// moment (here relay_sent at its MaxMsgs; in a cluster, its stream
// between leaders after a server's loss) was given up at once: the
// message was acked unmarked, and had its ack been lost in the same
// outage, its redelivery would have sent it again. The write is tried
// again, and the marker is there once the stream takes writes again.
func TestMarkerWriteIsTriedAgainBeforeTheAck(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("mark", "mark@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("mark", "first", "first")
	h.waitFor("the first message", func() bool { return h.delivered()["first"] == 1 })
	h.waitFor("the first ack", func() bool { return h.queued() == 0 })

	// relay_sent holds the first marker (and any the set-up wrote): no
	// room for another, as a KV bucket refuses new keys past MaxMsgs.
	const stream = "KV_" + relay.SentBucket
	full := queuetest.StreamInfo(t, h.ctx, h.js, stream).State.Msgs
	queuetest.LimitStream(t, h.ctx, h.js, stream, func(c *jetstream.StreamConfig) { c.MaxMsgs = int64(full) })
	h.publish("mark", "second", "second")
	h.waitFor("the marker write to be tried again (or given up)", func() bool {
		logs := h.logs.String()
		return strings.Contains(logs, "trying again before the ack") || strings.Contains(logs, "the idempotency marker was not written")
	})
	queuetest.LimitStream(t, h.ctx, h.js, stream, func(c *jetstream.StreamConfig) { c.MaxMsgs = -1 })
	h.waitFor("the second ack", func() bool { return h.queued() == 0 })
	if strings.Contains(h.logs.String(), "the idempotency marker was not written") {
		t.Fatal("the marker write was given up after one refusal: a redelivery would send the message again")
	}
	sm, err := relay.OpenSentMarkers(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	if sent, err := sm.Sent(h.ctx, "mark", "second", 0); err != nil || !sent {
		t.Fatalf("the second message's marker: sent %v, %v; want it written", sent, err)
	}
	if n := h.delivered()["second"]; n != 1 {
		t.Fatalf("second delivered %d times", n)
	}
}
