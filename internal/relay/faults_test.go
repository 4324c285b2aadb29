package relay_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/fakeo365"
	"relay365/internal/relay"
	"relay365/internal/submit"
)

// TestFaultStormNoHotLoopNoLeaks: replies slower than the data timeout,
// a storm of 451s and connections dropped mid-DATA, all on one account.
// Every message arrives (a reply that came too late may have been
// accepted, so those may arrive twice); each fault costs at most one retry
// (no hot loop: the retry count is bounded by the faults, not by time);
// afterwards the SMTP connections and the goroutines are back where they
// were. Identity faults (503s, timeouts, revocation) are covered by
// internal/sandbox TestTokenTransientFailuresBackOff and
// TestTokenRevocationNeedsConsentThenReconsent; dead-lettering under
// random faults by TestThousandMessagesUnderFaults.
func TestFaultStormNoHotLoopNoLeaks(t *testing.T) {
	h := newHarness(t, setup{
		// The fake's connection limit off: a connection the relay gave up
		// on stays open at the server until its slow reply, and counting
		// the 432s that causes would blur "one retry per fault"
		// (TestThrottledMailboxUsesFewerConnections covers 432).
		fake:   fakeo365.Config{MaxConns: -1},
		engine: relay.Config{IdleTimeout: 200 * time.Millisecond},
		// Every other reply must beat DataTimeout (a late one is a
		// duplicate): 2 s, where a loaded -race run stays far below; the
		// slow replies come well after it.
		transport: &submit.Transport{DataTimeout: 2 * time.Second, CommandTimeout: 2 * time.Second},
	})
	h.enroll("storm", "storm@contoso.com", "contoso.onmicrosoft.com", nil)
	h.waitFor("idle sessions closed", func() bool { return h.fake.OpenConns() == 0 })
	baseline := runtime.NumGoroutine()

	const n, slow, storm, drops = 60, 3, 20, 5
	h.fake.DelayNextData(slow, 6*time.Second)
	h.fake.SetNextDataReply(storm, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "storm"})
	h.fake.DropNextData(drops)
	for i := range n {
		h.publish("storm", fmt.Sprintf("storm-%02d", i), fmt.Sprintf("storm %02d", i))
	}
	h.waitFor("MAIL to drain", func() bool { return h.queued() == 0 })

	got := h.delivered()
	dups := 0
	for i := range n {
		c := got[fmt.Sprintf("storm %02d", i)]
		if c == 0 {
			t.Errorf("storm %02d lost", i)
		}
		dups += max(c-1, 0)
	}
	if dups > slow {
		t.Errorf("%d duplicates, more than the %d replies that came too late", dups, slow)
	}
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Errorf("%d dead letters from temporary faults", len(dl))
	}
	retried := h.outcome("storm", "retried")
	if retried < storm || retried > slow+storm+drops {
		t.Errorf("%v retries for %d faults: want one per fault", retried, slow+storm+drops)
	}
	t.Logf("%d messages, %d faults, %v retries, %d duplicates, %v sessions", n, slow+storm+drops, retried, dups,
		h.metric("relay_smtp_connections_total", "account", "storm"))

	h.waitFor("SMTP connections closed", func() bool { return h.fake.OpenConns() == 0 })
	h.waitFor(fmt.Sprintf("goroutines back to %d", baseline), func() bool { return runtime.NumGoroutine() <= baseline+2 })
}
