package submit

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/smtpclient"
)

func TestClassifyNetworkErrorsAreTemporary(t *testing.T) {
	for _, err := range []error{io.EOF, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, errors.New("something new")} {
		e := Classify("dial", err)
		if e.Class != ClassTransient || !e.Temporary() || e.Reply() != "" {
			t.Errorf("%v: %+v", err, e)
		}
	}
}

// The same reply means different things at different commands; these
// are the cases where the stage decides (RFC 5321 §4.5.3.1.10, RFC 3463
// §3.3, RFC 4954 §6), with the stage-free rows beside them for contrast.
func TestClassifyByStage(t *testing.T) {
	for _, tt := range []struct {
		stage string
		code  int
		ec    smtp.EnhancedCode
		want  Class
	}{
		{"rcpt", 552, smtp.EnhancedCode{5, 5, 3}, ClassTransient}, // too many recipients: temporary
		{"rcpt", 552, smtp.NoEnhancedCode, ClassTransient},
		{"data", 552, smtp.EnhancedCode{5, 3, 4}, ClassMessage}, // too large
		{"rcpt", 550, smtp.EnhancedCode{5, 2, 2}, ClassMessage}, // the recipient's mailbox is full
		{"rcpt", 552, smtp.EnhancedCode{5, 2, 2}, ClassTransient},
		{"data", 554, smtp.EnhancedCode{5, 2, 2}, ClassAccount}, // the sending mailbox is full (Office 365)
		{"mail", 530, smtp.EnhancedCode{5, 7, 0}, ClassSession}, // authentication required
		{"mail", 530, smtp.EnhancedCode{5, 7, 57}, ClassSession},
		{"auth", 530, smtp.EnhancedCode{5, 7, 0}, ClassConfig},  // at AUTH itself: the account's, pause
		{"auth", 530, smtp.EnhancedCode{5, 7, 57}, ClassConfig}, // at AUTH, Office 365's code too: not a reconnect loop
		{"rcpt", 552, smtp.EnhancedCode{5, 3, 4}, ClassMessage}, // too big for this recipient: permanent
		{"rcpt", 550, smtp.EnhancedCode{5, 1, 1}, ClassMessage},
		{"rcpt", 452, smtp.EnhancedCode{4, 5, 3}, ClassTransient},
		{"auth", 550, smtp.EnhancedCode{5, 7, 1}, ClassConfig},
	} {
		if got := classifyReply(tt.stage, tt.code, tt.ec, 0).Class; got != tt.want {
			t.Errorf("%d %v to %s: class %s, want %s", tt.code, tt.ec, tt.stage, got, tt.want)
		}
	}
}

// Office 365's replies at the end of DATA, with the class each must get
// (docs/office365.md §4). The rows here are those where the class turns
// on who is blocked: one sender, or every mailbox of the tenant.
func TestClassifyReplyWhoIsBlocked(t *testing.T) {
	for _, tt := range []struct {
		code int
		ec   smtp.EnhancedCode
		text string
		want Class
	}{
		// A user on the Restricted entities page: that mailbox only.
		{550, smtp.EnhancedCode{5, 1, 8}, "Access denied, bad outbound sender", ClassAccount},
		// The sending account banned or held for spam: every message from
		// it would meet the same reply, so it pauses instead of
		// dead-lettering them one by one.
		{550, smtp.EnhancedCode{5, 7, 501}, "Access denied, spam abuse detected.", ClassAccount},
		{550, smtp.EnhancedCode{5, 7, 511}, "Access denied, banned sender[192.0.2.1].", ClassAccount},
		{554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message WASCL UserAction verdict is not None. Actual verdict is RefuseQuota, ShowTierUpgrade.", ClassAccount},
		// Other 5.2.0 submission failures stay with the message.
		{554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.", ClassMessage},
		// The tenant itself blocked.
		{550, smtp.EnhancedCode{5, 7, 705}, "Access denied, tenant has exceeded threshold", ClassTenant},
		{550, smtp.EnhancedCode{5, 7, 708}, "Access denied, traffic not accepted from this IP", ClassTenant},
		{550, smtp.EnhancedCode{5, 7, 750}, "Client blocked from sending from unregistered domains", ClassTenant},
		// The tenant's daily external recipient limit (TERRL): every
		// mailbox of the tenant, until the 24-hour window has room.
		{550, smtp.EnhancedCode{5, 7, 233}, "Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)", ClassTenant},
		{550, smtp.EnhancedCode{5, 7, 232}, "Your message can't be sent because your trial tenant has exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)", ClassTenant},
	} {
		err := &smtpclient.Error{Command: "message", Err: &smtp.SMTPError{Code: tt.code, EnhancedCode: tt.ec, Message: tt.text}}
		if got := Classify("", err).Class; got != tt.want {
			t.Errorf("%d %v %q: class %s, want %s", tt.code, tt.ec, tt.text, got, tt.want)
		}
	}
}

// RecipientLimit reads a server's limit on recipients per transaction
// from an X.5.3 refusal of a RCPT after others were accepted (RFC 5321
// §4.5.3.1.10, RFC 3463 §3.6), and from nothing else.
func TestRecipientLimit(t *testing.T) {
	for _, tt := range []struct {
		stage    string
		code     int
		ec       smtp.EnhancedCode
		accepted int
		want     int
	}{
		{"rcpt", 452, smtp.EnhancedCode{4, 5, 3}, 100, 100}, // Office 365 past the tenant's limit
		{"rcpt", 552, smtp.EnhancedCode{5, 5, 3}, 3, 3},
		{"rcpt", 452, smtp.EnhancedCode{4, 5, 3}, 0, 0},  // none accepted: no limit to learn
		{"rcpt", 452, smtp.EnhancedCode{4, 3, 1}, 10, 0}, // out of storage, not a recipient limit
		{"rcpt", 452, smtp.NoEnhancedCode, 10, 0},        // a plain 452 says no more than "later"
		{"rcpt", 550, smtp.EnhancedCode{5, 1, 1}, 10, 0}, // this recipient
		{"mail", 452, smtp.EnhancedCode{4, 5, 3}, 10, 0}, // not a recipient
		{"data", 554, smtp.EnhancedCode{5, 5, 3}, 10, 0},
	} {
		if got := classifyReply(tt.stage, tt.code, tt.ec, tt.accepted).RecipientLimit(); got != tt.want {
			t.Errorf("%d %v to %s after %d accepted: limit %d, want %d", tt.code, tt.ec, tt.stage, tt.accepted, got, tt.want)
		}
	}
}

// classifyReply classifies a reply to the command of stage as the client
// returns it, accepted recipients before it.
func classifyReply(stage string, code int, ec smtp.EnhancedCode, accepted int) *SMTPError {
	return Classify("", &smtpclient.Error{Command: strings.ToUpper(stage), Accepted: accepted, Err: &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: "reply"}})
}

// TestCodeLabelIsAClosedSet: a metric label made of a reply code keeps the
// codes the RFCs define and folds every other into its class.
func TestCodeLabelIsAClosedSet(t *testing.T) {
	for code, want := range map[int]string{0: "0", 250: "250", 421: "421", 432: "432", 451: "451", 535: "535", 554: "554",
		299: "2xx", 399: "3xx", 466: "4xx", 599: "5xx", 199: "other", 600: "other", 999: "other", -1: "other"} {
		if got := CodeLabel(code); got != want {
			t.Errorf("CodeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}
