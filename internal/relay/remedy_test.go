package relay_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
)

// TestPausedAccountShowsItsRemedyOnStatus: an account paused by an SMTP
// reply shows on /status (the lane's status, in the JSON the page and
// `curl /status` get) what a person does about it, as docs/office365.md
// §4 says (submit.Remedy), not only the reply: 535 5.7.139 names the
// Exchange command that turns SMTP AUTH back on.
func TestPausedAccountShowsItsRemedyOnStatus(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("noauth", "noauth@contoso.com", "noauth.onmicrosoft.com", nil)
	h.fake.DisableSMTPAuth(a.Tenant, true)
	h.publishMsg(msgFor(a.Alias, "id-noauth", "noauth"))
	h.waitFor("the pause", func() bool {
		return h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassConfig)) >= 1
	})
	b, err := json.Marshal(h.lane(a.Alias))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Set-CASMailbox -Identity noauth@contoso.com -SmtpClientAuthenticationDisabled $false"; !strings.Contains(string(b), want) {
		t.Errorf("the lane's status %s does not say what to do (%q)", b, want)
	}
	h.fake.DisableSMTPAuth(a.Tenant, false)
	h.waitFor("delivery after the probe", func() bool { return h.delivered()["noauth"] == 1 })
	if b, _ := json.Marshal(h.lane(a.Alias)); strings.Contains(string(b), "Set-CASMailbox") {
		t.Errorf("the remedy stays after the pause ended: %s", b)
	}
}

// TestAuthRefusal5_7_139RemedyFollowsTheText: Exchange Online answers
// 535 5.7.139 for several conditions, told apart only by the text
// (Microsoft, "Troubleshoot SMTP AUTH client submission"): SMTP AUTH off
// for the tenant or mailbox, a conditional access policy, security
// defaults, a locked account. Each pauses the account (class config); the
// remedy on /status names the one that applies, not Set-CASMailbox for all.
func TestAuthRefusal5_7_139RemedyFollowsTheText(t *testing.T) {
	h := newHarness(t, setup{})
	for i, tc := range []struct {
		text, want string
	}{
		{"Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.", "Set-CASMailbox"},
		{"Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.", "conditional access"},
		{"Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator.", "security defaults"},
		{"Authentication unsuccessful, account locked.", "locked"},
	} {
		alias := fmt.Sprintf("r139-%d", i)
		a := h.enroll(alias, alias+"@contoso.com", alias+".onmicrosoft.com", nil)
		h.fake.SetNextAuthReply(1000, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: tc.text})
		h.publishMsg(msgFor(a.Alias, "id-"+alias, alias))
		h.waitFor("the pause", func() bool {
			return h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassConfig)) >= 1
		})
		got := h.lane(a.Alias).PauseRemedy
		if !strings.Contains(got, tc.want) || (tc.want != "Set-CASMailbox" && strings.Contains(got, "Set-CASMailbox")) {
			t.Errorf("535 5.7.139 %q: remedy %q, want one about %q", tc.text, got, tc.want)
		}
		h.fake.SetNextAuthReply(0, nil)
		h.waitFor("delivery after the probe", func() bool { return h.delivered()[alias] == 1 })
	}
}
