package relay_test

import (
	"testing"

	"relay365/internal/fakeo365"
	"relay365/internal/submit"
)

// TestXOAUTH2ErrorChallenge: a server that refuses the token with an
// error challenge (334 and base64 JSON {"status":"401",...}, RFC 7628
// §3.2.2) gets the client's empty answer and then says 535 (§3.2.3). The
// relay reads that as a refused token, as Office 365's direct 535 5.7.3
// (docs/office365.md §1.3, §4): one forced refresh and a new session; a
// second refusal pauses the account (class auth) until the token changes.
func TestXOAUTH2ErrorChallenge(t *testing.T) {
	h := newHarness(t, setup{})

	t.Run("once", func(t *testing.T) {
		a := h.enroll("chal1", "chal1@contoso.com", "chal1.onmicrosoft.com", nil)
		refreshes := h.fake.TokenCalls(fakeo365.GrantRefreshToken)
		h.fake.SetNextAuthChallenge(1, "401")
		h.publishMsg(msgFor(a.Alias, "id-chal1", "chal1"))
		h.waitFor("delivery", func() bool { return h.delivered()["chal1"] == 1 })
		if got := h.fake.TokenCalls(fakeo365.GrantRefreshToken) - refreshes; got != 1 {
			t.Errorf("%d refreshes, want the one forced refresh", got)
		}
		if n := h.metric("relay_account_pauses_total", "account", a.Alias); n != 0 {
			t.Errorf("%v pauses, want none", n)
		}
		if n := h.fake.Replies()["535 5.7.3"]; n < 1 {
			t.Errorf("the fake sent no 535 5.7.3 after the challenge: %v", h.fake.Replies())
		}
	})

	t.Run("after the refresh too", func(t *testing.T) {
		a := h.enroll("chal2", "chal2@contoso.com", "chal2.onmicrosoft.com", nil)
		h.fake.SetNextAuthChallenge(2, "400")
		h.publishMsg(msgFor(a.Alias, "id-chal2", "chal2"))
		h.waitFor("the pause", func() bool { return h.metric("relay_account_pauses_total", "account", a.Alias) >= 1 })
		if n := h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassAuth)); n != 1 {
			t.Fatalf("%v auth pauses, want 1 (status %+v)", n, h.lane(a.Alias))
		}
		if len(h.deadLetters(a.Alias)) != 0 {
			t.Fatal("a refused token dead-lettered mail")
		}
		h.waitFor("delivery after the probe", func() bool { return h.delivered()["chal2"] == 1 })
	})
}
