package relay_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
	"relay365/internal/termsafe"
)

// TestReplyTextIsBoundedAndClean: what a server writes after the reply
// code reaches /status (the pause reason), the logs and the dead letters
// as one short line without control characters. The text is the
// server's, and before STARTTLS anyone on the path writes it: a terminal
// escape in it must not reach an operator's screen, and a megabyte of it
// must not be kept for every queued message.
func TestReplyTextIsBoundedAndClean(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("noisy", "noisy@contoso.com", "noisy.onmicrosoft.com", nil)
	long := strings.Repeat("x", 64<<10)
	// 550 5.1.8 pauses the account (class account): the reply becomes
	// the pause reason on /status.
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 8},
		Message: "Access denied, bad outbound sender \x1b]0;owned\x07\x1b[2J\nsecond line\u202e " + long})
	h.publishMsg(msgFor(a.Alias, "id-noisy", "noisy"))
	h.waitFor("the pause or a dead letter", func() bool {
		return h.metric("relay_account_pauses_total", "account", a.Alias) >= 1 || len(h.deadLetters(a.Alias)) > 0
	})
	if n := h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassAccount)); n != 1 {
		t.Fatalf("%v account pauses, want 1", n)
	}
	st := h.lane(a.Alias)
	if !strings.Contains(st.PauseReason, "5.1.8 Access denied, bad outbound sender") {
		t.Errorf("pause reason %.200q does not keep the reply", st.PauseReason)
	}
	if i := termsafe.Index(st.PauseReason); i >= 0 {
		t.Errorf("pause reason holds a control character at %d: %q", i, st.PauseReason[max(0, i-20):min(len(st.PauseReason), i+20)])
	}
	if n := len(st.PauseReason); n > 1024 {
		t.Errorf("pause reason is %d bytes long", n)
	}
	if strings.Contains(h.logs.String(), long[:4096]) {
		t.Error("the logs hold the whole 64 KiB reply")
	}
	h.waitFor("delivery after the pause", func() bool { return h.delivered()["noisy"] == 1 })
}
