package relay_test

import (
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
)

// TestTenantBlockDoesNotPauseOtherOrganizations: a tenant block (550
// 5.7.708, docs/office365.md §4) pauses every account of the same tenant.
// "organizations" and "common" are no tenant: delegated accounts of
// unrelated organisations may all be configured with them (§2.1), and a
// block of one organisation must not stop the others' alerts.
func TestTenantBlockDoesNotPauseOtherOrganizations(t *testing.T) {
	h := newHarness(t, setup{})
	blocked := h.enroll("orgs-a", "alerts@fabrikam.com", "organizations", nil)
	other := h.enroll("orgs-b", "alerts@contoso.com", "organizations", nil)
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 708},
		Message: "Service unavailable. Access denied, traffic not accepted from this IP."})
	h.publishMsg(msgFor(blocked.Alias, "id-orgs-a", "orgs-a"))
	// Counted once the blocked account paused and its tenant was handled
	// (keepQueued, after pauseTenant).
	h.waitFor("the blocked account's message to wait", func() bool { return h.outcome(blocked.Alias, "paused") >= 1 })
	if n := h.metric("relay_account_pauses_total", "account", blocked.Alias, "class", string(submit.ClassTenant)); n < 1 {
		t.Fatalf("the blocked account did not pause (%v)", n)
	}
	if n := h.metric("relay_account_pauses_total", "account", other.Alias); n != 0 {
		t.Fatalf("an account of another organisation, also configured with tenant \"organizations\", paused %v times (status %+v)", n, h.lane(other.Alias))
	}
	h.waitFor("the blocked account's delivery after its probe", func() bool { return h.delivered()["orgs-a"] == 1 })
}
