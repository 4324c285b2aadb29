package relay_test

import (
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
)

// TestQuotaReplyPausesTheAccount: a spent quota (554 5.2.0
// SubmissionQuotaExceeded, docs/office365.md §4) pauses the account and
// never dead-letters its mail, however the reply is written:
//   - multi-line, its enhanced status code on its last line only (as
//     go-smtp, and so the fake, writes it; RFC 2034 §4 wants it on every
//     line, but a client that looks on the first line alone misreads the
//     others);
//   - with an enhanced code whose class (its first digit) disagrees with
//     the basic code: it still names the condition (RFC 3463 §3: the
//     subject and detail), and the basic code decides whether it is
//     permanent (RFC 5321 §4.2.1).
func TestQuotaReplyPausesTheAccount(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply *smtp.SMTPError
	}{
		{"multi", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception\n" +
				"[BeginDiagnosticData]Message submission rate for this client has exceeded the configured limit.[EndDiagnosticData]"}},
		{"digit", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{4, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, setup{})
			a := h.enroll(tc.name, tc.name+"@contoso.com", tc.name+".onmicrosoft.com", nil)
			h.fake.SetNextDataReply(1, tc.reply)
			h.publishMsg(msgFor(a.Alias, "id-"+tc.name, tc.name))
			h.waitFor("the pause or a dead letter", func() bool {
				return h.metric("relay_account_pauses_total", "account", a.Alias) >= 1 || len(h.deadLetters(a.Alias)) > 0
			})
			if dls := h.deadLetters(a.Alias); len(dls) > 0 {
				t.Fatalf("a spent quota dead-lettered the message: class %s, reason %q", dls[0].Class, dls[0].Reason)
			}
			if n := h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassQuota)); n != 1 {
				t.Fatalf("%v quota pauses, want 1 (status %+v)", n, h.lane(a.Alias))
			}
			h.waitFor("delivery after the pause", func() bool { return h.delivered()[tc.name] == 1 })
		})
	}
}
