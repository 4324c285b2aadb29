package submit

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"relay365/internal/smtpclient"
	"relay365/internal/termsafe"
)

// Class is what a failed SMTP exchange means for the sender, decided once,
// here at the SMTP boundary, from the reply (docs/office365.md §4). The
// delivery engine maps each class to an action (ack, retry, pause,
// dead-letter) and adds the classes of failures found before any SMTP
// exchange; the set is closed, because the class is also a metric label.
type Class string

const (
	ClassTransient Class = "transient" // 451, other 4xx, network: try again later
	ClassAuth      Class = "auth"      // 535 5.7.3: the token was refused (refresh it once)
	ClassConfig    Class = "config"    // 535 5.7.139, 504 5.7.4, 501 5.5.124, 421 4.7.66, no STARTTLS, bad certificate, no TLS version or cipher in common, no TLS after STARTTLS
	ClassSession   Class = "session"   // 530 5.7.57: reconnect and authenticate
	ClassThrottle  Class = "throttle"  // 432 4.3.2: too many connections
	ClassQuota     Class = "quota"     // 554 5.2.0 SubmissionQuotaExceeded, 550 5.1.90: the day's budget is spent
	ClassAccount   Class = "account"   // 554 5.2.2 sending mailbox full; 550 5.1.8, 5.7.501, 5.7.511, 5.2.0 OutboundSpamException: sender restricted
	ClassTenant    Class = "tenant"    // 550 5.7.708/705/750: tenant or its outbound IP blocked; 5.7.232/233: its external recipient limit
	ClassMessage   Class = "message"   // 550 5.7.60, 552, other 5xx: this message, as it is, can never go
)

// SMTPError is a failed SMTP exchange: the reply (or the network error
// where there was no reply), the stage it happened in, and its class.
type SMTPError struct {
	Stage    string // dial, tls, auth, rset, mail, rcpt, data, message (the content and the reply to its end)
	Code     int    // 0 when there was no reply
	Enhanced string // "5.7.3", "" when absent
	Text     string
	Class    Class
	Err      error // the underlying error
	// Accepted is, at stage rcpt, how many of the transaction's
	// recipients the server accepted before refusing (smtpclient.Error).
	Accepted int
}

// RecipientLimit returns the most recipients the server takes in one
// transaction when the refusal says it has such a limit, else 0: an
// X.5.3 "too many recipients" (RFC 3463 §3.6) to a RCPT after others of
// the transaction were accepted. RFC 5321 §4.5.3.1.10 has a server at
// its limit answer 452 (or 552) and the client send the rest in a later
// transaction; Office 365 answers "452 4.5.3 Too many recipients" past
// the tenant's recipient limit, which an administrator may set below
// 500.
func (e *SMTPError) RecipientLimit() int {
	if e.Stage != "rcpt" || e.Accepted < 1 || (e.Code != 452 && e.Code != 552) || !strings.HasSuffix(e.Enhanced, ".5.3") {
		return 0
	}
	return e.Accepted
}

func (e *SMTPError) Error() string {
	if e.Code == 0 {
		// No reply, but the error may quote what came instead
		// (net/textproto puts an unreadable line in its message):
		// kept like a reply's text.
		return fmt.Sprintf("smtp %s: %s", e.Stage, ReplyText(e.Err.Error()))
	}
	return fmt.Sprintf("smtp %s: %s", e.Stage, e.Reply())
}

func (e *SMTPError) Unwrap() error { return e.Err }

// condition is the enhanced code with its class taken from the basic
// code: "5.2.0" for "554 4.2.0". RFC 3463 §2 wants the class to repeat
// the basic code's first digit; where a server's does not, its subject
// and detail still name the condition (§3), and the basic code decides
// whether it is permanent (RFC 5321 §4.2.1). "" when there is none.
func (e *SMTPError) condition() string {
	if e.Enhanced == "" || e.Code < 400 || e.Code >= 600 {
		return e.Enhanced
	}
	return fmt.Sprint(e.Code/100) + e.Enhanced[1:]
}

// Reply is the server's reply line as Office 365 wrote it, "" if none.
func (e *SMTPError) Reply() string {
	if e.Code == 0 {
		return ""
	}
	if e.Enhanced == "" {
		return fmt.Sprintf("%d %s", e.Code, e.Text)
	}
	return fmt.Sprintf("%d %s %s", e.Code, e.Enhanced, e.Text)
}

// SendAsDenied reports whether the reply refuses the sending mailbox the
// message's From address: 550 5.7.60 ("Client does not have permissions
// to send as this sender"), 554 5.2.252 SendAsDenied, or 5.2.0 with
// STOREDRV's SendAsDeniedException (Exchange reports the same refusal
// under each, depending on where it is found; 5.2.0 is told apart by the
// text only, as for the quota and spam refusals, ClassifyReply).
func (e *SMTPError) SendAsDenied() bool {
	c := e.condition()
	return e.Code >= 500 && (c == "5.7.60" || c == "5.2.252" || strings.Contains(e.Text, "SendAsDenied"))
}

// DayQuota reports whether the reply says the mailbox's rolling 24-hour
// recipient limit is reached: 550 5.1.90 ("you've reached your daily
// limit for message recipients"). 554 5.2.0 SubmissionQuotaExceeded, the
// other quota reply, Office 365 gives for its message rate per minute too
// ("Message submission rate for this client has exceeded the configured
// limit"), so it alone does not tell which window is full.
func (e *SMTPError) DayQuota() bool {
	return e.Class == ClassQuota && e.condition() == "5.1.90"
}

// Temporary reports whether the message may still go later: every class
// but ClassMessage is about the session, the account or the server.
func (e *SMTPError) Temporary() bool { return e.Class != ClassMessage }

// Classify turns what the SMTP client returned into an *SMTPError; the
// stage is the failed command's unless the caller names one (dial, tls).
// An *SMTPError is returned as it is.
func Classify(stage string, err error) *SMTPError {
	if err == nil {
		return nil
	}
	var already *SMTPError
	if errors.As(err, &already) {
		return already
	}
	var ce *smtpclient.Error
	accepted := 0
	if errors.As(err, &ce) {
		if stage == "" {
			stage = strings.ToLower(ce.Command)
		}
		err, accepted = ce.Err, ce.Accepted
	}
	e := &SMTPError{Stage: stage, Err: err, Class: ClassTransient, Accepted: accepted}
	var cv *tls.CertificateVerificationError
	switch {
	case errors.Is(err, smtpclient.ErrNoStartTLS):
		e.Class = ClassConfig // never AUTH in plaintext: pause until fixed
		return e
	case errors.Is(err, smtpclient.ErrNotSendable):
		e.Class = ClassMessage // this message, as it is, can never go
		return e
	case errors.As(err, &cv):
		// An untrusted, expired or mismatched certificate does not heal
		// by retrying the message: the account pauses until it is fixed
		// (or the interception ends). Verification is never skipped.
		e.Class = ClassConfig
		return e
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		if tlsProblem(err) != "" {
			// No TLS version or cipher suite in common, a
			// certificate that cannot be used, or no TLS at all
			// after the 220 to STARTTLS: the next handshake
			// meets the same server (tlsProblem).
			e.Class = ClassConfig
		}
		return e // network errors, timeouts, resets, other TLS failures: temporary
	}
	e.Code = se.Code
	if ec := se.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		e.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	e.Class = ClassifyReply(e.Code, e.condition(), se.Message)
	// Decided on the whole text; what the error prints (the dead
	// letter, /status, the logs) is one bounded line the server cannot
	// use to drive a terminal. Err is still the reply as it came.
	e.Text = ReplyText(se.Message)
	beforeMail := stage == "dial" || stage == "tls" || stage == "auth"
	switch {
	case e.Code == 530 && !beforeMail:
		// 5.7.57 from Office 365; 5.7.0 "authentication required"
		// elsewhere (RFC 4954 §6): the session, not the message.
		e.Class = ClassSession
	case e.Code == 530:
		// At AUTH itself (or before it) a new session would meet the
		// same reply: the account's or the server's, whatever its
		// enhanced code (5.7.57 included): pause and probe.
		e.Class = ClassConfig
	}
	if stage == "rcpt" {
		switch {
		case e.Code == 552 && e.condition() == "5.3.4":
			// Message too big (RFC 3463 §3.4), against the SIZE this
			// recipient takes: permanent for this message.
		case e.Code == 552:
			// RFC 5321 §4.5.3.1.10: a 552 to RCPT (too many
			// recipients, historically) SHOULD be taken as temporary.
			e.Class = ClassTransient
		case e.Class == ClassAccount:
			// X.2.2 to RCPT is the recipient's mailbox (RFC 3463
			// §3.3), not the sending one's: this message.
			e.Class = ClassMessage
		}
	}
	if e.Class == ClassMessage && beforeMail {
		// A permanent reply before any message was named (a greeting,
		// EHLO or AUTH refused) is about the account or the server,
		// never this message: pause and probe, do not dead-letter.
		e.Class = ClassConfig
	}
	return e
}

// MaxReplyText is the most of a reply's text an SMTPError keeps, in bytes.
// A reply line is at most 512 octets (RFC 5321 §4.5.3.1.5), but a
// multi-line reply has no limit, and the text goes into every log line,
// the pause reason on /status and dead letters.
const MaxReplyText = 512

// ReplyText is a reply's text as the relay keeps it: the lines of a
// multi-line reply (RFC 5321 §4.2.1) joined by spaces, control characters
// (ESC, BEL, C1, bidirectional overrides) written as visible escapes, and
// at most MaxReplyText bytes. The text is the server's, and before
// STARTTLS anyone on the path writes it.
func ReplyText(s string) string {
	return termsafe.Shorten(termsafe.Line(strings.ReplaceAll(strings.TrimSpace(s), "\n", " ")), MaxReplyText)
}

// ClassifyReply maps an SMTP reply to its class (docs/office365.md §4).
// Enhanced codes (RFC 3463) decide where Office 365 gives them; the text is
// read only where one enhanced code covers different conditions (5.2.0:
// SubmissionQuotaExceeded, OutboundSpamException, SendAsDenied, ...).
func ClassifyReply(code int, enhanced, text string) Class {
	switch {
	case code == 535 && enhanced == "5.7.139":
		return ClassConfig
	case code == 535:
		return ClassAuth
	case code == 504 && enhanced == "5.7.4", code == 501 && enhanced == "5.5.124":
		return ClassConfig
	case code == 530 && enhanced == "5.7.57":
		return ClassSession // other 530s by stage: Classify
	case code == 421 && enhanced == "4.7.66":
		return ClassConfig
	case code == 432 && enhanced == "4.3.2":
		return ClassThrottle
	case enhanced == "5.2.2":
		return ClassAccount
	case enhanced == "5.1.8":
		// "Access denied, bad outbound sender": Microsoft put this one
		// user on the Restricted entities page for outbound spam; it
		// can still receive, and the tenant's other mailboxes still send
		// (Microsoft, "Removing a user from the Restricted Users portal after
		// sending spam email", https://docs.microsoft.com/en-us/office365/SecurityCompliance/removing-user-from-restricted-users-portal-after-spam).
		// So the account pauses until a probe goes through, and its
		// tenant's other accounts carry on.
		return ClassAccount
	case enhanced == "5.7.501", enhanced == "5.7.511",
		enhanced == "5.2.0" && strings.Contains(text, "OutboundSpamException"):
		// The sending account banned for spam ("Access denied, spam abuse
		// detected", "Access denied, banned sender"), or its submission
		// refused by the outbound spam filter ("OutboundSpamException;
		// ... WASCL UserAction verdict is not None", reported by SMTP AUTH
		// users of smtp.office365.com whose account had been held until
		// unblocked). None of them is about this message: each of the
		// account's messages would get the same reply, so the account
		// pauses and probes with one message instead of dead-lettering
		// its mail one message at a time.
		return ClassAccount
	case enhanced == "5.2.0" && strings.Contains(text, "SubmissionQuotaExceeded"), enhanced == "5.1.90":
		return ClassQuota
	case enhanced == "5.7.708", enhanced == "5.7.705", enhanced == "5.7.750":
		return ClassTenant
	case enhanced == "5.7.233", enhanced == "5.7.232":
		// The tenant (5.7.232: a trial tenant) has sent to as many
		// external recipients as Exchange Online allows it in a rolling
		// 24 hours (the tenant external recipient rate limit). Microsoft's
		// NDR table (https://learn.microsoft.com/troubleshoot/exchange/email-delivery/ndr/non-delivery-reports-in-exchange-online)
		// says sending resumes once the window's count falls below the
		// limit: a quota of the whole tenant, so every account of it
		// pauses and probes with a real message; nothing is dead-lettered.
		return ClassTenant
	case code >= 500 && code < 600:
		return ClassMessage // 5.7.60 send-as, 552 size, and every other permanent reply
	default:
		return ClassTransient // 451, 421, other 4xx, anything unexpected
	}
}

// replyCodes are the reply codes a metric label keeps as they are: those
// RFC 5321 §4.2.3 lists, those of AUTH (RFC 4954 §6: 235, 334, 432, 454,
// 530, 534, 535, 538) and of STARTTLS (RFC 3207 §4: 454), which cover
// every code ClassifyReply names. Another code is a server's own.
var replyCodes = map[int]bool{
	211: true, 214: true, 220: true, 221: true, 235: true, 250: true, 251: true, 252: true,
	334: true, 354: true,
	421: true, 432: true, 450: true, 451: true, 452: true, 454: true, 455: true,
	500: true, 501: true, 502: true, 503: true, 504: true, 530: true, 534: true, 535: true,
	538: true, 550: true, 551: true, 552: true, 553: true, 554: true, 555: true,
}

// CodeLabel is a reply code as a metric label: the code for a known one
// (replyCodes) and "0" for no reply; any other code a server sends
// becomes its class, "2xx", "3xx", "4xx" or "5xx" (RFC 5321 §4.2.1: the
// first digit is what the reply means), and a code outside 200-599
// "other". The label's values are thus a closed set, whatever a server
// (or anyone on the path before STARTTLS) writes.
func CodeLabel(code int) string {
	switch {
	case code == 0 || replyCodes[code]:
		return strconv.Itoa(code)
	case code >= 200 && code < 600:
		return strconv.Itoa(code/100) + "xx"
	default:
		return "other"
	}
}
