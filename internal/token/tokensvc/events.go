package tokensvc

import (
	"encoding/json"
	"time"

	"relay365/internal/token"
)

// Event subjects (docs/design.md §4). Events are plain NATS messages (not
// JetStream): subscribe with `nats sub 'relay.events.>'`; nobody listening
// means nobody is told, and nothing is stored.
const (
	SubjectRefreshed       = "relay.events.token.refreshed"
	SubjectRefreshFailed   = "relay.events.token.refresh_failed"
	SubjectConsentRequired = "relay.events.account.consent_required"
	// SubjectStored says that a new usable access token is in the store
	// for an account: a refresh by any replica, or a consent written by
	// authtool. Every token service replica that sees the write publishes
	// it (the store's watch), so workers hear of a new consent without
	// reading relay_tokens themselves.
	SubjectStored = "relay.events.token.stored"
)

// Event is the JSON body of every token event. It holds no secrets: no
// tokens, no client secret, no description text from the identity
// platform.
type Event struct {
	Kind        string    `json:"kind"` // token.refreshed, token.refresh_failed, account.consent_required, token.stored
	Account     string    `json:"account"`
	Time        time.Time `json:"time"`
	Instance    string    `json:"instance"` // the token service that made the call
	State       string    `json:"state"`
	PrevState   string    `json:"prev_state"`
	Expiry      time.Time `json:"expiry,omitzero"`
	Forced      bool      `json:"forced,omitempty"`
	Rotated     bool      `json:"rotated,omitempty"`
	AppOnly     bool      `json:"app_only,omitempty"`
	Class       string    `json:"class,omitempty"`
	OAuthError  string    `json:"error,omitempty"`
	ErrorCodes  []int     `json:"error_codes,omitempty"`
	HTTPStatus  int       `json:"http_status,omitempty"`
	FailCount   int       `json:"fail_count,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Remedy      string    `json:"remedy,omitempty"`
}

// published is one event and its subject.
type published struct {
	subject string
	event   Event
}

// events turns a refresh outcome into the events to publish, in order.
func events(o token.Outcome, instance string, now time.Time) []published {
	ev := Event{
		Account: o.Account, Time: now, Instance: instance, State: string(o.To), PrevState: string(o.From),
		Expiry: o.Expiry, Forced: o.Forced, Rotated: o.Rotated, AppOnly: o.AppOnly,
	}
	if o.Err == nil {
		ev.Kind = "token.refreshed"
		return []published{{SubjectRefreshed, ev}}
	}
	ev.Kind = "token.refresh_failed"
	ev.Class, ev.OAuthError, ev.ErrorCodes, ev.HTTPStatus = string(o.Err.Class), o.Err.Err, o.Err.Codes, o.Err.Status
	ev.FailCount, ev.NextAttempt, ev.Remedy = o.FailCount, o.NextAttempt, o.Err.Remedy
	out := []published{{SubjectRefreshFailed, ev}}
	if o.SMTPRefused {
		out = nil // no refresh failed: the SMTP server refused the token it gave
	}
	if o.To == token.StateNeedsConsent && o.From != token.StateNeedsConsent {
		cr := ev
		cr.Kind = "account.consent_required"
		out = append(out, published{SubjectConsentRequired, cr})
	}
	return out
}

// storedEvent is token.stored for a record this replica saw written.
func storedEvent(rec token.Record, instance string, now time.Time) Event {
	return Event{Kind: "token.stored", Account: rec.Account, Time: now, Instance: instance, State: string(rec.State), Expiry: rec.Expiry}
}

func encodeEvent(ev Event) []byte {
	b, _ := json.Marshal(ev) // plain data: cannot fail
	return b
}
