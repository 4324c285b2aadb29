package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/relay"
)

// TestRefusedSessionsDoNotSweepTheBacklog: Office 365 refuses every
// session of a mailbox (421 4.3.2 at AUTH: the service unavailable for
// it, throttled, in maintenance) while 120 messages wait. Each message
// is retried on its own schedule, but a lane that goes on fetching
// the next message as soon as a session failed opens a connection per
// queued message, hundreds a minute for a large backlog, against a
// server that asked it to go away. The connections opened must be
// bounded by the account's backoff, not by the size of its backlog.
func TestRefusedSessionsDoNotSweepTheBacklog(t *testing.T) {
	h := newHarness(t, setup{
		// No message comes back within the test: what is counted is the
		// lane's pace through its backlog, not the retries.
		engine: relay.Config{Retry: relay.Backoff{Base: 10 * time.Minute, Max: 10 * time.Minute, Jitter: 0.2}},
	})
	h.enroll("busy", "busy@contoso.com", "contoso.onmicrosoft.com", nil)
	h.waitFor("idle sessions closed", func() bool { return h.fake.OpenConns() == 0 })
	h.fake.SetNextAuthReply(1_000_000, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available, closing transmission channel"})
	before := h.fake.Connections()
	const backlog = 120
	for i := range backlog {
		h.publish("busy", fmt.Sprintf("busy-%03d", i), fmt.Sprintf("busy %03d", i))
	}
	// Counted over a window far shorter than the retry schedule's first
	// wait (10 minutes): a relay that backs off opens a few.
	const bound = 12
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && h.fake.Connections()-before <= bound {
		time.Sleep(50 * time.Millisecond)
	}
	if n := h.fake.Connections() - before; n > bound {
		t.Fatalf("%d SMTP connections opened for %d queued messages while every session is refused with 421, want at most %d",
			n, backlog, bound)
	}
	t.Logf("%d SMTP connections for %d queued messages, every session refused", h.fake.Connections()-before, backlog)
}
