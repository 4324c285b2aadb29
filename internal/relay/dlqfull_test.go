package relay_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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
	nc, err := nats.Connect(h.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var tries atomic.Int64 // copies offered to MAIL_DLQ, stored or refused
	sub, err := nc.Subscribe(queue.DLQPrefix+"ghost", func(*nats.Msg) { tries.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
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
