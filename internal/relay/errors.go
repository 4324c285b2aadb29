package relay

import (
	"errors"
	"fmt"
	"time"

	"relay365/internal/message"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// Class is what a failed delivery means, decided once at each boundary:
// submit classifies SMTP replies and network failures (docs/office365.md
// §4); the engine adds the two classes of failures found before any SMTP
// exchange. The class alone picks the action, and it is a metric label,
// so the set is closed.
type Class = submit.Class

// Classes of failures found before any SMTP exchange.
const (
	ClassInvalid  Class = "invalid"  // bad input: dead-letter
	ClassIdentity Class = "identity" // no access token (needs consent, config error, identity platform down): pause
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

// ActionFor maps a class to what the worker does.
func ActionFor(c Class) Action {
	switch c {
	case submit.ClassMessage, ClassInvalid:
		return ActionDeadLetter
	case submit.ClassConfig, submit.ClassAccount, submit.ClassTenant, submit.ClassQuota, ClassIdentity, submit.ClassAuth:
		// submit.ClassAuth reaches here only after its one forced refresh failed
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

// probeFor returns how an account paused for class c is probed.
func probeFor(c Class) probe {
	switch c {
	case ClassIdentity:
		return probeToken
	case submit.ClassAuth, submit.ClassConfig:
		return probeAuth
	default: // quota, account, tenant: only a real message tells
		return probeSend
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

// errSameID: another stream message with this message's id (a requeue's
// copy beside an original whose Term was lost, a replay beside an original
// a half-done dead-lettering left queued) is being handled by this
// process. Its markers, read now, could not yet show what that one sends:
// it goes back to the stream unsent, and its next delivery reads them; at
// its last delivery it is requeued as a fresh message (lane.finish).
var errSameID = errors.New("another copy of this message (the same id) is being sent here")

// errPausedAhead: the account paused while this message, fetched ahead,
// waited for a session; it goes back to the stream unsent.
var errPausedAhead = errors.New("account paused before the message's turn came")

// errAccountChanged: the account changed (mailbox, sender policy, limits)
// while this message, rendered and paced for the old one, waited for a
// session; it goes back to the stream to be prepared again.
var errAccountChanged = errors.New("account changed before the message's turn came")

// errRecipientLimit: the server took fewer recipients in one transaction
// than the batch held (learnRcptLimit). Nothing was sent; the message goes
// back to the stream at once, to be split again in smaller batches.
var errRecipientLimit = errors.New("too many recipients for one message; split again")

// classify turns any delivery error into its class, once. The reply (nil
// when there was none) is recorded on dead letters and in metrics.
func classify(err error) (Class, *submit.SMTPError) {
	var se *submit.SMTPError
	var ie *token.IdentityError
	var pe *PaceError
	var be *token.BindingError
	switch {
	case errors.As(err, &se):
		return se.Class, se
	case errors.As(err, &be):
		// The account record disagrees with its token binding: nothing
		// was dialled; the account pauses until the record is restored
		// or the account is connected again.
		return submit.ClassConfig, nil
	case message.IsInvalid(err):
		return ClassInvalid, nil
	case errors.As(err, &ie), errors.Is(err, token.ErrNotFound):
		// No access token: needs consent, config error, the identity
		// platform down with the token expired, or no tokens stored.
		return ClassIdentity, nil
	case errors.As(err, &pe):
		return submit.ClassQuota, nil
	default:
		return submit.ClassTransient, nil // unknown errors count as temporary
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
