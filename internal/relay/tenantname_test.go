package relay_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
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

// TestTenantBlockPausesTheTenantByItsID: a tenant configured by its domain
// on one account and by its tenant ID (GUID) on another is one tenant:
// Entra names its ID (the tid claim) at either's sign-in, and a block of
// the tenant (550 5.7.708) pauses both; an account of another tenant
// sends on. The status says which key matched them.
func TestTenantBlockPausesTheTenantByItsID(t *testing.T) {
	h := newHarness(t, setup{})
	byName := h.enroll("by-name", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	id := fakeo365.TenantID("contoso.onmicrosoft.com", "")
	byID := h.enroll("by-id", "billing@contoso.com", strings.ToUpper(id), nil)
	other := h.enroll("other", "alerts@fabrikam.com", "fabrikam.onmicrosoft.com", nil)
	for _, alias := range []string{byName.Alias, byID.Alias} {
		if a, err := h.accounts.Get(h.ctx, alias); err != nil || a.TenantID != id {
			t.Fatalf("account %s: tenant_id %q (%v), want %s, learnt at sign-in", alias, a.TenantID, err, id)
		}
	}
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 708},
		Message: "Service unavailable. Access denied, traffic not accepted from this IP."})
	h.publishMsg(msgFor(byName.Alias, "id-by-name", "by-name"))
	h.waitFor("the blocked account's message to wait", func() bool { return h.outcome(byName.Alias, "paused") >= 1 })
	if n := h.metric("relay_account_pauses_total", "account", byID.Alias, "class", string(submit.ClassTenant)); n != 1 {
		t.Fatalf("the account configured with the tenant's ID paused %v times for the tenant, want 1 (status %+v)", n, h.lane(byID.Alias))
	}
	if st := h.lane(byID.Alias); !strings.Contains(st.PauseTenant, "tenant ID "+id) {
		t.Fatalf("pause_tenant %q, want it to name the tenant ID", st.PauseTenant)
	}
	h.publishMsg(msgFor(other.Alias, "id-other", "other"))
	h.waitFor("the other tenant's message", func() bool { return h.delivered()["other"] == 1 })
	if n := h.metric("relay_account_pauses_total", "account", other.Alias); n != 0 {
		t.Fatalf("an account of another tenant paused %v times", n)
	}
}

// TestTenantBlockDoesNotPausePersonalAccounts: Entra names one tenant ID
// for every personal Microsoft account (account.ConsumerTenantID), at
// consumers as at common; a block of one person's mailbox must not pause
// another person's, as "consumers" as configured does not.
func TestTenantBlockDoesNotPausePersonalAccounts(t *testing.T) {
	h := newHarness(t, setup{})
	blocked := h.enroll("msa-a", "alerts@outlook.com", "consumers", nil)
	other := h.enroll("msa-b", "someone@hotmail.com", "common", nil)
	for _, alias := range []string{blocked.Alias, other.Alias} {
		if a, err := h.accounts.Get(h.ctx, alias); err != nil || a.TenantID != account.ConsumerTenantID {
			t.Fatalf("account %s: tenant_id %q (%v), want the personal accounts' %s: the test proves nothing", alias, a.TenantID, err, account.ConsumerTenantID)
		}
	}
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 708},
		Message: "Service unavailable. Access denied, traffic not accepted from this IP."})
	h.publishMsg(msgFor(blocked.Alias, "id-msa-a", "msa-a"))
	h.waitFor("the blocked account's message to wait", func() bool { return h.outcome(blocked.Alias, "paused") >= 1 })
	if st := h.lane(blocked.Alias); !st.Paused || !strings.Contains(st.PauseTenant, "personal") {
		t.Fatalf("the blocked account's status %+v, want a pause whose pause_tenant says it paused alone as a personal account", st)
	}
	if n := h.metric("relay_account_pauses_total", "account", other.Alias); n != 0 {
		t.Fatalf("another person's personal account paused %v times (status %+v)", n, h.lane(other.Alias))
	}
	h.publishMsg(msgFor(other.Alias, "id-msa-b", "msa-b"))
	h.waitFor("the other person's message", func() bool { return h.delivered()["msa-b"] == 1 })
}

// TestTenantBlockPausesAccountsNotYetSignedInAgain: after an upgrade,
// only an account connected again has learnt its tenant ID; one connected
// by an earlier version (no tenant_id) is still known by its tenant as
// configured. Two accounts configured with the same domain are one tenant
// whichever of them knows the ID, as they were before the ID was learnt:
// a block met by either pauses both.
func TestTenantBlockPausesAccountsNotYetSignedInAgain(t *testing.T) {
	h := newHarness(t, setup{})
	learnt := h.enroll("learnt", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	older := h.enroll("older", "billing@contoso.com", "contoso.onmicrosoft.com", nil)
	// older's record as an earlier version wrote it: no tenant_id (and,
	// to see the lane take the record, two connections).
	rec, err := h.accounts.Get(h.ctx, older.Alias)
	if err != nil {
		t.Fatal(err)
	}
	rec.TenantID, rec.MaxConns = "", 2
	if err := h.accounts.Put(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the older record to reach its lane", func() bool { return h.lane(older.Alias).ConnLimit == 2 })

	for i, blocked := range []account.Account{learnt, older} {
		other := older
		if blocked.Alias == older.Alias {
			other = learnt
		}
		before := h.metric("relay_account_pauses_total", "account", other.Alias, "class", string(submit.ClassTenant))
		h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 708},
			Message: "Service unavailable. Access denied, traffic not accepted from this IP."})
		id := fmt.Sprintf("id-%s-%d", blocked.Alias, i)
		h.publishMsg(msgFor(blocked.Alias, id, id))
		h.waitFor("the blocked account's message to wait", func() bool { return h.outcome(blocked.Alias, "paused") >= 1 })
		if n := h.metric("relay_account_pauses_total", "account", other.Alias, "class", string(submit.ClassTenant)); n != before+1 {
			t.Fatalf("%s blocked: %s, of the same tenant as configured, paused %v times for the tenant, want %v (status %+v)", blocked.Alias, other.Alias, n, before+1, h.lane(other.Alias))
		}
		h.waitFor("the blocked account's delivery after its probe", func() bool { return h.delivered()[id] == 1 })
	}
}
