package relay_test

import (
	"testing"
	"time"
)

// TestStopWaitsForARemovedAccountsSend: an account removed while its lane
// has a message in the middle of its transaction leaves that lane to
// finish the transaction on its own. Run's shutdown waited only for the
// lanes still registered: it returned while the removed account's send
// was still at Office 365, and its deferred cancel then cut that send
// with no grace at all (after the final dot: sent, unmarked, and sent
// again by the next delivery), while the daemon went on to close NATS
// under the handler's marker and ack. The removed lane's send gets the
// same grace as every other, and Run returns after it.
func TestStopWaitsForARemovedAccountsSend(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("gone", "gone@contoso.com", "contoso", nil)
	h.fake.DelayNextData(1, 3*time.Second) // well inside the 10 s grace
	h.publish("gone", "gone-1", "removed mid-send")
	h.waitFor("the message's end of DATA held at the server", func() bool { return h.fake.DataInProgress() == 1 })
	if err := h.accounts.Delete(h.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the lane removed", func() bool { return len(h.engine.Status()) == 0 })
	h.stop()
	if n := h.fake.DataInProgress(); n != 0 {
		t.Fatalf("Run returned with %d transaction of a removed account still at Office 365 (its send cut without the grace)", n)
	}
	if n := h.delivered()["removed mid-send"]; n != 1 {
		t.Fatalf("the removed account's message in flight was delivered %d times, want once (it finished inside the grace)", n)
	}
}
