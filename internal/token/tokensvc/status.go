package tokensvc

import (
	"context"
	"errors"
	"time"

	"relay365/internal/account"
	"relay365/internal/token"
)

// Status values besides the token states.
const (
	StatusMissing    = "missing"    // registered, but no tokens stored
	StatusUnreadable = "unreadable" // the sealed record does not open (key file)
)

// AccountStatus is one account in token.status and /status. It never holds
// a token, a secret or key material.
type AccountStatus struct {
	Account     string    `json:"account"`
	Mailbox     string    `json:"mailbox"`
	AppOnly     bool      `json:"app_only,omitempty"`
	State       string    `json:"state"` // healthy, needs_consent, config_error, transient, missing, unreadable
	Expiry      time.Time `json:"expiry,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	FailCount   int       `json:"fail_count,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	ErrorCodes  []int     `json:"error_codes,omitempty"`
	Remedy      string    `json:"remedy,omitempty"`
	KeyID       string    `json:"key_id,omitempty"`
	// RefreshingOn is the token service instance holding the refresh lease.
	RefreshingOn string `json:"refreshing_on,omitempty"`
}

// Collect reads the status of every registered account from the store.
func Collect(ctx context.Context, accounts *account.Registry, store *token.Store, now time.Time) ([]AccountStatus, error) {
	accts, err := accounts.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]AccountStatus, 0, len(accts))
	for _, a := range accts {
		st, err := Describe(ctx, store, a, now)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Describe reads one account's token record for its state, never its
// secrets. A missing or unopenable record is a state (missing, unreadable)
// with its remedy; only a failure to reach the store is an error.
func Describe(ctx context.Context, store *token.Store, a account.Account, now time.Time) (AccountStatus, error) {
	st := AccountStatus{Account: a.Alias, Mailbox: a.Mailbox, AppOnly: a.AppOnly}
	rec, _, err := store.Get(ctx, a.Alias)
	switch {
	case errors.Is(err, token.ErrNotFound):
		st.State, st.LastError = StatusMissing, err.Error()
		st.Remedy = "no tokens stored: run: authtool login --account " + a.Alias
	case errors.Is(err, token.ErrOpen):
		st.State, st.LastError = StatusUnreadable, err.Error()
		st.Remedy = "the sealed record does not open with RELAY_TOKEN_KEY_FILE: use the key file it was sealed with (the error names its key id), or run authtool login again"
	case err != nil:
		return st, err
	default:
		st.State, st.Expiry, st.LastRefresh = string(rec.EffectiveState()), rec.Expiry, rec.LastRefresh
		st.NextAttempt, st.FailCount, st.LastError, st.KeyID = rec.NextAttempt, rec.FailCount, rec.LastError, rec.KeyID
		if rec.LeaseUntil.After(now) {
			st.RefreshingOn = token.LeaseInstance(rec)
		}
		if p := rec.Problem(a, now); p != nil {
			st.ErrorCodes, st.Remedy = p.Codes, p.Remedy
			if p.Err == token.ErrSMTPRefused {
				st.LastError = p.Error()
			}
		}
	}
	return st, nil
}
