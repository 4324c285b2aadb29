package relay_test

import (
	"encoding/json"
	"strings"
	"testing"

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
