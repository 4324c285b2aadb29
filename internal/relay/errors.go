package relay

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Class is what a failed delivery means for the relay. It is decided once,
// at the SMTP boundary, from the reply (OFFICE365.md §4), and it alone
// decides the action. It is also a metric label, so the set is closed.
type Class string

const (
	ClassTransient Class = "transient" // 451, other 4xx, network: retry with backoff
	ClassAuth      Class = "auth"      // 535 5.7.3: refresh the token once, then retry
	ClassConfig    Class = "config"    // 535 5.7.139, 504 5.7.4, 501 5.5.124, 421 4.7.66: pause the account
	ClassSession   Class = "session"   // 530 5.7.57: reconnect and authenticate
	ClassThrottle  Class = "throttle"  // 432 4.3.2: too many connections, back off
	ClassQuota     Class = "quota"     // 554 5.2.0 SubmissionQuotaExceeded, 550 5.1.90: wait for the window
	ClassAccount   Class = "account"   // 554 5.2.2 sending mailbox full: pause the account
	ClassTenant    Class = "tenant"    // 550 5.7.708/705/750, 550 5.1.8: tenant blocked, pause
	ClassMessage   Class = "message"   // 550 5.7.60, 552, other 5xx: this message can never go
	ClassInvalid   Class = "invalid"   // bad input, found before SMTP
	ClassIdentity  Class = "identity"  // no access token (needs consent, config error, identity down)
)

// Action is what the worker does with a message after an attempt.
type Action int

const (
	ActionAck        Action = iota // 250: done
	ActionRetry                    // NakWithDelay on the retry schedule
	ActionPause                    // the account is unusable for now: retry after a long delay
	ActionDeadLetter               // never deliverable: MAIL_DLQ with the reason
)

func (a Action) String() string {
	return [...]string{"ack", "retry", "pause", "dead_letter"}[a]
}

// Action maps a class to what the worker does.
func (c Class) Action() Action {
	switch c {
	case ClassMessage, ClassInvalid:
		return ActionDeadLetter
	case ClassConfig, ClassAccount, ClassTenant, ClassQuota, ClassIdentity:
		return ActionPause
	default:
		// transient, auth (after its one refresh), session, throttle, and
		// anything unknown: mail is never dropped on a guess.
		return ActionRetry
	}
}

// SMTPError is a failed SMTP exchange: the reply (or the network error
// where there was no reply), the stage it happened in, and its class.
type SMTPError struct {
	Stage    string // dial, tls, auth, mail, rcpt, data
	Code     int    // 0 when there was no reply
	Enhanced string // "5.7.3", "" when absent
	Text     string
	Class    Class
	Err      error // the underlying error
}

func (e *SMTPError) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("smtp %s: %v", e.Stage, e.Err)
	}
	return fmt.Sprintf("smtp %s: %s", e.Stage, e.Reply())
}

func (e *SMTPError) Unwrap() error { return e.Err }

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

// Temporary reports whether the message may still go later.
func (e *SMTPError) Temporary() bool { return e.Class.Action() != ActionDeadLetter }

// classifySMTP turns what go-smtp returned at stage into an *SMTPError.
func classifySMTP(stage string, err error) *SMTPError {
	if err == nil {
		return nil
	}
	var already *SMTPError
	if errors.As(err, &already) {
		return already
	}
	e := &SMTPError{Stage: stage, Err: err, Class: ClassTransient}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return e // network errors, timeouts, TLS failures: temporary
	}
	e.Code, e.Text = se.Code, se.Message
	if ec := se.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		e.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	e.Class = ClassifyReply(e.Code, e.Enhanced, e.Text)
	return e
}

// ClassifyReply maps an SMTP reply to its class per OFFICE365.md §4.
// Enhanced codes (RFC 3463) decide where Office 365 gives them; the text is
// read only where one enhanced code covers different conditions (5.2.0).
func ClassifyReply(code int, enhanced, text string) Class {
	switch {
	case code == 535 && enhanced == "5.7.139":
		return ClassConfig
	case code == 535:
		return ClassAuth
	case code == 504 && enhanced == "5.7.4", code == 501 && enhanced == "5.5.124":
		return ClassConfig
	case code == 530 && enhanced == "5.7.57":
		return ClassSession
	case code == 421 && enhanced == "4.7.66":
		return ClassConfig
	case code == 432 && enhanced == "4.3.2":
		return ClassThrottle
	case enhanced == "5.2.2":
		return ClassAccount
	case enhanced == "5.2.0" && strings.Contains(text, "SubmissionQuotaExceeded"), enhanced == "5.1.90":
		return ClassQuota
	case enhanced == "5.7.708", enhanced == "5.7.705", enhanced == "5.7.750", enhanced == "5.1.8":
		return ClassTenant
	case code >= 500 && code < 600:
		return ClassMessage // 5.7.60 send-as, 552 size, and every other permanent reply
	default:
		return ClassTransient // 451, 421, other 4xx, anything unexpected
	}
}
