package relay

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
	"relay365/internal/token"
)

// TestClassifyOffice365Replies is docs/office365.md §4, row by row: the
// class submit gives each reply and the action the engine takes for it.
func TestClassifyOffice365Replies(t *testing.T) {
	tests := []struct {
		reply  *smtp.SMTPError
		class  Class
		action Action
	}{
		{&smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [host]"}, submit.ClassAuth, ActionPause},
		{&smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}, submit.ClassConfig, ActionPause},
		{&smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}, submit.ClassConfig, ActionPause},
		{&smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 124}, Message: "XOAUTH2 data wrong"}, submit.ClassConfig, ActionPause},
		{&smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail."}, submit.ClassSession, ActionRetry},
		{&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 66}, Message: "TLS 1.0 and 1.1 are not supported"}, submit.ClassConfig, ActionPause},
		{&smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}, submit.ClassThrottle, ActionRetry},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed"}, submit.ClassQuota, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 90}, Message: "Your message can't be sent because you've reached your daily limit"}, submit.ClassQuota, ActionPause},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException"}, submit.ClassAccount, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}, submit.ClassMessage, ActionDeadLetter},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: "SendAsDenied"}, submit.ClassMessage, ActionDeadLetter},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 708}, Message: "Service unavailable. Access denied, traffic not accepted from this IP."}, submit.ClassTenant, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 705}, Message: "tenant exceeded threshold"}, submit.ClassTenant, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 750}, Message: "unregistered domain"}, submit.ClassTenant, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 8}, Message: "Access denied, bad outbound sender"}, submit.ClassAccount, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 501}, Message: "Access denied, spam abuse detected."}, submit.ClassAccount, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 511}, Message: "Access denied, banned sender[192.0.2.1]."}, submit.ClassAccount, ActionPause},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:OutboundSpamException; WASCL UserAction verdict is not None."}, submit.ClassAccount, ActionPause},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 233}, Message: "Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)"}, submit.ClassTenant, ActionPause},
		{&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary server error. Please try again later. PRX4"}, submit.ClassTransient, ActionRetry},
		{&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 111}, Message: "server fault"}, submit.ClassTransient, ActionRetry},
		{&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available, closing transmission channel"}, submit.ClassTransient, ActionRetry},
		{&smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum message size"}, submit.ClassMessage, ActionDeadLetter},
		{&smtp.SMTPError{Code: 552, EnhancedCode: smtp.NoEnhancedCode, Message: "too large"}, submit.ClassMessage, ActionDeadLetter},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "RESOLVER.ADR.RecipientNotFound"}, submit.ClassMessage, ActionDeadLetter},
		{&smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try later"}, submit.ClassTransient, ActionRetry},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:OtherException"}, submit.ClassMessage, ActionDeadLetter},
	}
	for _, tc := range tests {
		e := submit.Classify("data", tc.reply)
		if e.Class != tc.class || ActionFor(e.Class) != tc.action {
			t.Errorf("%d %v %q: class %s action %s, want %s %s", tc.reply.Code, tc.reply.EnhancedCode, tc.reply.Message, e.Class, ActionFor(e.Class), tc.class, tc.action)
		}
		if !errors.Is(e, tc.reply) {
			t.Errorf("%d: the SMTP error must unwrap to the reply", tc.reply.Code)
		}
	}
}

func TestBackoffSchedule(t *testing.T) {
	b := Backoff{Base: 10 * time.Second, Max: 10 * time.Minute}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 320 * time.Second, 10 * time.Minute, 10 * time.Minute}
	for i, w := range want {
		if got := b.Delay(i + 1); got != w {
			t.Errorf("attempt %d: %s, want %s", i+1, got, w)
		}
	}
	b.Jitter = 0.2
	for attempt := 1; attempt < 100; attempt++ {
		d := b.Delay(attempt)
		base := want[min(attempt-1, len(want)-1)]
		if d < base*8/10 || d > base*12/10 {
			t.Fatalf("attempt %d: %s outside ±20%% of %s", attempt, d, base)
		}
	}
}

// An account record that disagrees with its token binding is a
// configuration problem: the account pauses (class config, probed by
// opening a session), and the message waits; nothing is dead-lettered.
func TestBindingMismatchPausesWithClassConfig(t *testing.T) {
	err := fmt.Errorf("delivery: %w", &token.BindingError{Account: "alerts", Fields: []token.FieldMismatch{{Field: "smtp_addr", Record: "evil:587", Bound: "smtp.office365.com:587"}}})
	class, se := classify(err)
	if class != submit.ClassConfig || se != nil || ActionFor(class) != ActionPause || probeFor(class) != probeAuth {
		t.Fatalf("binding mismatch: class %s (reply %v), action %s; want config, pause, probed by a session", class, se, ActionFor(class))
	}
}
