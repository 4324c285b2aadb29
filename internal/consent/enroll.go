package consent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/relay"
	"relay365/internal/token"
)

// Enroller stores an account only after a test mail went through.
type Enroller struct {
	Accounts  *account.Registry
	Store     *token.Store
	Transport *relay.Transport
	Now       func() time.Time // default time.Now
}

// TestMailError is a failed test mail: nothing was stored.
type TestMailError struct {
	Err    *relay.SMTPError
	Remedy string
}

func (e *TestMailError) Error() string {
	return fmt.Sprintf("test mail refused, nothing stored: %v; %s", e.Err, e.Remedy)
}

func (e *TestMailError) Unwrap() error { return e.Err }

// Enroll sends a test mail to testTo (the mailbox itself when empty) with
// tok and, when Office 365 accepts it, stores the sealed tokens and then
// the account. The account is written last: its presence is what makes
// workers use it.
func (e Enroller) Enroll(ctx context.Context, acct account.Account, tok *oauth2.Token, secret, testTo string) error {
	acct.Normalize()
	if err := acct.Validate(); err != nil {
		return err
	}
	now := time.Now
	if e.Now != nil {
		now = e.Now
	}
	// The token's lifetime counts from here, on the relay's clock (the
	// token service decides expiry on the same clock).
	expiry := now().Add(token.Lifetime(tok))
	if testTo == "" {
		testTo = acct.Mailbox
	}
	m := &message.Message{
		ID: "consent-test-" + message.NewID(), Account: acct.Alias, To: []string{testTo},
		Subject: "Relay365: " + acct.Alias + " is connected",
		Text: fmt.Sprintf("This test message proves that Relay365 can send as %s through %s with OAuth2.\n"+
			"The account %q is stored only because this message was accepted.\n", acct.Mailbox, acct.SMTPAddr, acct.Alias),
	}
	if err := m.Validate(); err != nil {
		return err
	}
	r, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox}, now())
	if err != nil {
		return err
	}
	err = e.Transport.Send(ctx, relay.Endpoint{Addr: acct.SMTPAddr, CAFile: acct.CAFile}, acct.Mailbox, tok.AccessToken, r)
	var se *relay.SMTPError
	if errors.As(err, &se) {
		return &TestMailError{Err: se, Remedy: relay.Remedy(se, acct.Mailbox)}
	}
	if err != nil {
		return err
	}
	_, tokenURL, _ := acct.Endpoints()
	rec := token.Record{
		Account: acct.Alias, RefreshToken: tok.RefreshToken, AccessToken: tok.AccessToken, Expiry: expiry,
		Scopes: acct.Scopes, TokenURL: tokenURL, ClientSecret: secret, LastRefresh: now(), State: token.StateHealthy,
	}
	if _, err := e.Store.Put(ctx, rec); err != nil {
		return fmt.Errorf("storing tokens: %w", err)
	}
	if err := e.Accounts.Put(ctx, acct); err != nil {
		return fmt.Errorf("storing account: %w", err)
	}
	return nil
}
