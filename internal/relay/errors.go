package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/message"
	"relay365/internal/smtpclient"
	"relay365/internal/token"
)

// Class is what a failed delivery means for the relay. It is decided once,
// at the SMTP boundary, from the reply (OFFICE365.md §4), and it alone
// decides the action. It is also a metric label, so the set is closed.
type Class string

const (
	ClassTransient Class = "transient" // 451, other 4xx, network: retry with backoff
	ClassAuth      Class = "auth"      // 535 5.7.3: refresh the token once and retry; if it stays, pause the account
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
	ActionPause                    // the account is unusable for now: stop its lane, probe until it clears
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
	case ClassConfig, ClassAccount, ClassTenant, ClassQuota, ClassIdentity, ClassAuth:
		// ClassAuth reaches here only after its one forced refresh failed
		// too (the lane refreshes before it reports the class).
		return ActionPause
	default:
		// transient, session, throttle, and anything unknown: mail is
		// never dropped on a guess.
		return ActionRetry
	}
}

// probe is how a paused account finds out that its condition cleared.
type probe int

const (
	probeNone  probe = iota // the pause ends by itself (the pacer's window)
	probeToken              // ask for an access token (consent, identity platform)
	probeAuth               // open a session: STARTTLS + AUTH, no message
	probeSend               // send one message; the rest wait for its result
)

// probe returns how an account paused for class c is probed.
func (c Class) probe() probe {
	switch c {
	case ClassIdentity:
		return probeToken
	case ClassAuth, ClassConfig:
		return probeAuth
	default: // quota, account, tenant: only a real message tells
		return probeSend
	}
}

// SMTPError is a failed SMTP exchange: the reply (or the network error
// where there was no reply), the stage it happened in, and its class.
type SMTPError struct {
	Stage    string // dial, tls, auth, rset, mail, rcpt, data, message (the content and the reply to its end)
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

// classifySMTP turns what the SMTP client returned into an *SMTPError; the
// stage is the failed command's unless the caller names one (dial, tls).
func classifySMTP(stage string, err error) *SMTPError {
	if err == nil {
		return nil
	}
	var already *SMTPError
	if errors.As(err, &already) {
		return already
	}
	var ce *smtpclient.Error
	if errors.As(err, &ce) {
		if stage == "" {
			stage = strings.ToLower(ce.Command)
		}
		err = ce.Err
	}
	e := &SMTPError{Stage: stage, Err: err, Class: ClassTransient}
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
		return e // network errors, timeouts, TLS failures: temporary
	}
	e.Code, e.Text = se.Code, se.Message
	if ec := se.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		e.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	e.Class = ClassifyReply(e.Code, e.Enhanced, e.Text)
	if e.Class == ClassMessage && (stage == "dial" || stage == "tls" || stage == "auth") {
		// A permanent reply before any message was named (a greeting,
		// EHLO or AUTH refused) is about the account or the server,
		// never this message: pause and probe, do not dead-letter.
		e.Class = ClassConfig
	}
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

// PaceError says the account's own budget (Office 365's limits, kept by the
// pacer) has no room for this transaction for a while: the account pauses
// until then instead of provoking a quota reply.
type PaceError struct {
	Wait   time.Duration
	Reason string
}

func (e *PaceError) Error() string {
	return fmt.Sprintf("paced: %s; room again in %s", e.Reason, e.Wait.Round(time.Second))
}

// errStopping: the worker is shutting down before this message's SMTP
// transaction started; it goes back to the stream untouched.
var errStopping = errors.New("worker stopping before the send started")

// errPausedAhead: the account paused while this message, fetched ahead,
// waited for a session; it goes back to the stream unsent.
var errPausedAhead = errors.New("account paused before the message's turn came")

// errAccountChanged: the account changed (mailbox, sender policy, limits)
// while this message, rendered and paced for the old one, waited for a
// session; it goes back to the stream to be prepared again.
var errAccountChanged = errors.New("account changed before the message's turn came")

// classify turns any delivery error into its class, once. The reply (nil
// when there was none) is recorded on dead letters and in metrics.
func classify(err error) (Class, *SMTPError) {
	var se *SMTPError
	var ie *token.IdentityError
	var pe *PaceError
	switch {
	case errors.As(err, &se):
		return se.Class, se
	case message.IsInvalid(err):
		return ClassInvalid, nil
	case errors.As(err, &ie), errors.Is(err, token.ErrNotFound):
		// No access token: needs consent, config error, the identity
		// platform down with the token expired, or no tokens stored.
		return ClassIdentity, nil
	case errors.As(err, &pe):
		return ClassQuota, nil
	default:
		return ClassTransient, nil // unknown errors count as temporary
	}
}

// pauseHint is how long the error itself says to wait (0: unknown).
func pauseHint(err error) time.Duration {
	var ie *token.IdentityError
	var pe *PaceError
	switch {
	case errors.As(err, &pe):
		return pe.Wait
	case errors.As(err, &ie):
		return ie.RetryAfter
	}
	return 0
}
