package relay_test

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// TestSweeperBacksOffAFullDLQ: 100 messages for an account that does not
// exist wait while MAIL_DLQ has no room. The sweeper runs every second
// (here every 50 ms) and tried every one of them at each run: a copy
// refused, a warning logged, per message per run, for as long as the
// DLQ stays full, exactly when a producer misconfigured with a wrong
// alias fills it. Its attempts must be bounded by a backoff, not by the
// messages times the runs; and when MAIL_DLQ has room again they are all
// dead-lettered without help, none lost.
func TestSweeperBacksOffAFullDLQ(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{
		UnknownGrace: 100 * time.Millisecond,
		Retry:        relay.Backoff{Base: time.Second, Max: 2 * time.Second, Jitter: 0.2},
	}})
	tries := dlqOffers(t, h, "ghost")
	restore := refuseStream(t, h, queue.StreamDLQ)
	const n = 100
	for i := range n {
		h.publish("ghost", fmt.Sprintf("ghost-%03d", i), "nobody")
	}
	// Three seconds of a full DLQ: 60 sweeps.
	const bound = 10
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && tries.Load() <= bound {
		time.Sleep(50 * time.Millisecond)
	}
	if got := tries.Load(); got > bound {
		t.Fatalf("%d dead letters offered to a full MAIL_DLQ for %d messages, want at most %d", got, n, bound)
	}
	t.Logf("%d dead letters offered to a full MAIL_DLQ in 3 s for %d messages", tries.Load(), n)
	if q := h.queued(); q != n {
		t.Fatalf("%d queued while MAIL_DLQ is full, want all %d kept", q, n)
	}
	restore()
	h.waitFor("every message dead-lettered once MAIL_DLQ has room", func() bool { return h.queued() == 0 })
	if dl := h.deadLetters("ghost"); len(dl) != n {
		t.Fatalf("%d dead letters of ghost, want %d", len(dl), n)
	}
}

// TestExpiredBehindAFullDLQBacksOff: 20 messages expired in MAIL while
// MAIL_DLQ has no room. Each delivery tries the dead letter and, refused,
// gives the message back; it came back after the first step of the retry
// schedule every time, so expired mail cycled through the lane at a fixed
// pace for as long as the DLQ stayed full (thousands of expired messages:
// hundreds of refused copies a second, each fetched, logged and nak'ed).
// The wait must grow with the deliveries, as for any other refusal; and
// with room back every one is dead-lettered, none lost.
func TestExpiredBehindAFullDLQBacksOff(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{
		QueueLifetime: time.Hour,
		Retry:         relay.Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2},
	}})
	h.enroll("late", "late@contoso.com", "contoso.onmicrosoft.com", nil)
	tries := dlqOffers(t, h, "late")
	restore := refuseStream(t, h, queue.StreamDLQ)
	const n = 20
	for i := range n {
		// Requeued copies first queued two hours ago: expired at their
		// first delivery.
		b, err := json.Marshal(&message.Message{ID: fmt.Sprintf("late-%02d", i), Account: "late", To: []string{"ops@fabrikam.com"}, Subject: "too late", Text: "x"})
		if err != nil {
			t.Fatal(err)
		}
		m := &nats.Msg{Subject: queue.Subject("late"), Data: b, Header: nats.Header{}}
		m.Header.Set(queue.HdrQueued, time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339Nano))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("late-%02d:requeue:1", i))
		m.Header.Set(queue.HdrMessageID, fmt.Sprintf("late-%02d", i))
		if _, err := h.js.PublishMsg(h.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// Four seconds: 40 steps of the schedule's first wait.
	const perMessage = 10
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) && tries.Load() <= n*perMessage {
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d dead letters offered to a full MAIL_DLQ in 4 s for %d expired messages", tries.Load(), n)
	if got := tries.Load(); got > n*perMessage {
		t.Fatalf("%d dead letters offered to a full MAIL_DLQ for %d expired messages, want at most %d", got, n, n*perMessage)
	}
	restore()
	h.waitFor("every expired message dead-lettered once MAIL_DLQ has room", func() bool { return h.queued() == 0 })
	if dl := h.deadLetters("late"); len(dl) != n {
		t.Fatalf("%d dead letters, want %d", len(dl), n)
	}
}

// dlqOffers counts the copies offered to MAIL_DLQ for account alias,
// stored or refused, from now on.
func dlqOffers(t *testing.T, h *harness, alias string) *atomic.Int64 {
	t.Helper()
	nc, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	tries := new(atomic.Int64)
	if _, err := nc.Subscribe(queue.DLQPrefix+alias, func(*nats.Msg) { tries.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return tries
}
