package relay_test

import (
	"testing"
)

// TestReplyLostAfterTheContentIsRetried: the connection ends after the
// final "." and before the reply, and the server had accepted the
// message. The relay cannot know (docs/office365.md §4, design.md §7.10):
// it retries with backoff, never dead-letters, and the message arrives
// twice, the one duplicate the documentation promises in this case.
func TestReplyLostAfterTheContentIsRetried(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("lost", "lost@contoso.com", "lost.onmicrosoft.com", nil)
	h.fake.LoseNextReply(1)
	h.publishMsg(msgFor(a.Alias, "id-lost", "lost"))
	h.waitFor("the retry's delivery", func() bool { return h.delivered()["lost"] == 2 })
	h.waitFor("the message to leave the queue", func() bool { return h.queued() == 0 })
	if n := h.outcome(a.Alias, "retried"); n != 1 {
		t.Errorf("%v retries, want 1", n)
	}
	if n := len(h.deadLetters(a.Alias)); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	if n := h.metric("relay_account_pauses_total", "account", a.Alias); n != 0 {
		t.Errorf("%v pauses, want none", n)
	}
	if n := h.outcome(a.Alias, "sent"); n != 1 {
		t.Errorf("%v sent, want 1", n)
	}
}
