package token

import (
	"fmt"
	"strings"

	"relay365/internal/account"
)

// Binding is what an account's tokens are for: the SMTP endpoint they may
// be presented to (smtp_addr, and the extra CA that endpoint's certificate
// is verified with), and the app registration they were issued to
// (client_id). It is sealed with the tokens, written by consent from the
// account being enrolled, and handed to the workers with every access
// token, so that a rewritten account record in relay_accounts (which
// workers and token services read, and only the admin may write) cannot
// send a live token to another host: a worker whose account record
// disagrees with the binding opens no session (docs/design.md §9.6).
type Binding struct {
	SMTPAddr string `json:"smtp_addr"`
	CAFile   string `json:"ca_file,omitempty"`
	ClientID string `json:"client_id"`
}

// BindingOf is the binding of account a as consent records it: its
// fields trimmed, the default SMTP endpoint when none is set (what
// account.Normalize does).
func BindingOf(a account.Account) Binding {
	b := Binding{SMTPAddr: strings.TrimSpace(a.SMTPAddr), CAFile: strings.TrimSpace(a.CAFile), ClientID: strings.TrimSpace(a.ClientID)}
	if b.SMTPAddr == "" {
		b.SMTPAddr = account.DefaultSMTPAddr
	}
	return b
}

// Bound reports whether b holds a binding. Records stored before bindings
// existed have none (every enrolled account has an SMTP endpoint).
func (b Binding) Bound() bool { return b.SMTPAddr != "" }

// Check compares account a, as a worker has it from relay_accounts, with
// the binding; a difference in any field is a *BindingError naming every
// field that differs. An unbound b (a token service of an earlier
// version) checks nothing.
func (b Binding) Check(a account.Account) error {
	if !b.Bound() {
		return nil
	}
	have := BindingOf(a)
	var diff []FieldMismatch
	for _, f := range []FieldMismatch{
		{Field: "smtp_addr", Record: have.SMTPAddr, Bound: b.SMTPAddr},
		{Field: "ca_file", Record: have.CAFile, Bound: b.CAFile},
		{Field: "client_id", Record: have.ClientID, Bound: b.ClientID},
	} {
		if f.Record != f.Bound {
			diff = append(diff, f)
		}
	}
	if len(diff) == 0 {
		return nil
	}
	return &BindingError{Account: a.Alias, Fields: diff}
}

// FieldMismatch is one field of an account record that differs from its
// token binding. Neither value is a secret.
type FieldMismatch struct {
	Field  string // smtp_addr, ca_file or client_id
	Record string // the value in relay_accounts
	Bound  string // the value sealed with the tokens
}

// BindingError says that an account record disagrees with the binding
// sealed with its tokens: the record was rewritten after consent, by
// mistake or by an attacker. The delivery engine pauses the account with
// class config and opens no session. Its text names the fields and their
// values, never a token.
type BindingError struct {
	Account string
	Fields  []FieldMismatch
}

func (e *BindingError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = fmt.Sprintf("%s is %q in relay_accounts but %q in the token binding", f.Field, f.Record, f.Bound)
	}
	return fmt.Sprintf("account %s: the account record does not match the binding sealed with its tokens (%s): "+
		"no SMTP session opened, no token sent; if the change is intended, connect the account again "+
		"(authtool login, app or import --account %s) to bind the new values, otherwise restore the account record",
		e.Account, strings.Join(parts, "; "), e.Account)
}

// FieldNames lists the fields that differ, comma separated (for logs).
func (e *BindingError) FieldNames() string {
	names := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		names[i] = f.Field
	}
	return strings.Join(names, ",")
}
