package relay_test

import (
	"testing"

	"github.com/emersion/go-smtp"
)

// TestOddReplyCodeIsABoundedLabel: relay_smtp_replies_total's code label
// took whatever three digits a server sent, so a server (or anyone on the
// path before STARTTLS) could make a series per code. A code no RFC
// defines counts as its class ("4xx"); a known one keeps its code.
func TestOddReplyCodeIsABoundedLabel(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("odd", "odd@contoso.com", "contoso", nil)
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 466, EnhancedCode: smtp.EnhancedCode{4, 0, 0}, Message: "odd server, try again"})
	h.publishMsg(msgFor(a.Alias, "id-odd", "odd code"))
	// Outcome "sent" is counted after the transaction's replies.
	h.waitFor("the retried message sent", func() bool { return h.outcome(a.Alias, "sent") == 1 })
	if _, ok := h.series("relay_smtp_replies_total", "account", a.Alias, "code", "466"); ok {
		t.Error(`relay_smtp_replies_total has a series with code="466", the server's own code`)
	}
	if n := h.metric("relay_smtp_replies_total", "account", a.Alias, "code", "4xx", "class", "transient"); n != 1 {
		t.Errorf(`relay_smtp_replies_total{code="4xx",class="transient"} = %v, want 1`, n)
	}
	if n := h.metric("relay_smtp_replies_total", "account", a.Alias, "code", "250", "class", "sent"); n != 1 {
		t.Errorf(`relay_smtp_replies_total{code="250",class="sent"} = %v, want 1 (a known code keeps its value)`, n)
	}
}
