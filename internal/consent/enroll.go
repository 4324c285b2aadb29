package consent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/submit"
	"relay365/internal/termsafe"
	"relay365/internal/token"
)

// Enroller stores an account only after a test mail went through.
type Enroller struct {
	Accounts  *account.Registry
	Store     *token.Store
	Transport *submit.Transport // default: a Transport with default timeouts
	Now       func() time.Time  // default time.Now
	// SkipTestMail stores the account without the test mail: for the
	// scale bench and tests that connect thousands of mailboxes of the
	// fake Office 365 (the sign-in and token exchange still run over
	// HTTP). authtool never sets it.
	SkipTestMail bool
	// Pacing, when set, counts each accepted test mail in the mailbox's
	// pacing budget (pacing.Pacer): Office 365 counts it against the 30 a
	// minute, and a burst right after consent would otherwise meet a
	// quota refusal the relay's pacing exists to avoid.
	Pacing interface {
		Record(ctx context.Context, mailbox string, rcpts int) error
	}
}

// TestMailError is a failed test mail; Enroll stored nothing.
type TestMailError struct {
	Err    *submit.SMTPError
	Remedy string
}

// Error quotes the server's reply with its control characters escaped
// (termsafe): it is printed on the operator's terminal.
func (e *TestMailError) Error() string {
	return fmt.Sprintf("test mail refused: %s; %s", termsafe.Line(e.Err.Error()), e.Remedy)
}

func (e *TestMailError) Unwrap() error { return e.Err }

// storeTimeout bounds the two KV writes that store an enrolled account.
const storeTimeout = 15 * time.Second

// Enroll sends a test mail to testTo (the mailbox itself when empty) with
// tok and, when Office 365 accepts it, stores the sealed tokens (with
// secret, for app-only accounts) and then the account. The account is
// written last: its presence is what makes workers use it.
//
// The sealed record binds the tokens to the account's SMTP endpoint, CA
// file and client id (token.Binding: workers refuse an account record
// that later disagrees) and holds the account's proxy URL as given,
// credentials included; the account record keeps only the proxy's
// credential-free form (account.RedactProxy).
//
// All or nothing: once the test mail is accepted the writes run to their
// end even if ctx is cancelled (Ctrl-C), under their own deadline; if the
// account cannot be written, the tokens are deleted again. A failure before
// that stores nothing.
func (e Enroller) Enroll(ctx context.Context, acct account.Account, tok *oauth2.Token, secret, testTo string) error {
	acct.Normalize()
	if err := acct.Validate(); err != nil {
		return err
	}
	// A person may sign in with another account than the mailbox (a
	// browser already signed in): the tokens would send as someone else.
	if !acct.AppOnly {
		if err := checkSignedIn(tok, acct.Mailbox); err != nil {
			return err
		}
	}
	// The tenant itself, whichever name acct.Tenant gives it: tenant-wide
	// pauses are keyed by it (account.TenantKey).
	if tid, ok := TenantIDOf(tok); ok {
		acct.TenantID = tid
	}
	// The token's lifetime counts from here, on the relay's clock (the
	// token service decides expiry on the same clock).
	expiry := e.now().Add(token.Lifetime(tok))
	if !e.SkipTestMail {
		if err := e.SendTest(ctx, acct, tok.AccessToken, testTo); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	_, tokenURL, _ := acct.Endpoints()
	rec := token.Record{
		Account: acct.Alias, RefreshToken: tok.RefreshToken, AccessToken: tok.AccessToken, Expiry: expiry,
		Scopes: acct.Scopes, TokenURL: tokenURL, ClientSecret: secret, LastRefresh: e.now(), State: token.StateHealthy,
		Binding: token.BindingOf(acct), ProxyURL: acct.ProxyURL,
	}
	if _, err := e.Store.Put(sctx, rec); err != nil {
		return fmt.Errorf("test mail accepted, but storing the tokens failed, nothing stored: %w", err)
	}
	acct.ProxyURL = account.RedactProxy(acct.ProxyURL) // the credentials are sealed above
	if err := e.Accounts.Put(sctx, acct); err != nil {
		if derr := e.Store.Delete(sctx, acct.Alias); derr != nil {
			return fmt.Errorf("test mail accepted, but storing account %s failed (%w) and its tokens could not be removed again (%v): run authtool remove --account %s", acct.Alias, err, derr, acct.Alias)
		}
		return fmt.Errorf("test mail accepted, but storing account %s failed, its tokens were removed again: %w", acct.Alias, err)
	}
	// A record this one replaces may hold proxy credentials in plain text
	// (an earlier version's): take them out of the bucket's history too.
	if _, err := e.Accounts.ScrubProxyCredentials(sctx, acct.Alias); err != nil {
		return fmt.Errorf("account %s is connected and stored, but earlier revisions of its record in %s that hold proxy credentials in plain text could not be removed: %w "+
			"(as the NATS admin: nats stream purge KV_%s --subject '$KV.%s.%s' --keep 1)", acct.Alias, account.Bucket, err, account.Bucket, account.Bucket, acct.Alias)
	}
	return nil
}

// SendTest sends the test mail through acct with accessToken to `to` (the
// mailbox itself when empty). A refusal is a *TestMailError whose remedy
// says what to change; `authtool test` uses it on stored accounts.
func (e Enroller) SendTest(ctx context.Context, acct account.Account, accessToken, to string) error {
	if to == "" {
		to = acct.Mailbox
	}
	m := &message.Message{
		ID: "consent-test-" + message.NewID(), Account: acct.Alias, To: []string{to},
		Subject: "Relay365: " + acct.Alias + " is connected",
		Text: fmt.Sprintf("This test message proves that Relay365 can send as %s through %s with OAuth2.\n"+
			"The account %q is stored only because this message was accepted.\n", acct.Mailbox, acct.SMTPAddr, acct.Alias),
	}
	if err := m.Validate(); err != nil {
		return err
	}
	r, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox}, e.now())
	if err != nil {
		return err
	}
	err = e.transport().Send(ctx, submit.Endpoint{Addr: acct.SMTPAddr, CAFile: acct.CAFile}, acct.Mailbox, accessToken, r)
	var se *submit.SMTPError
	if errors.As(err, &se) {
		return &TestMailError{Err: se, Remedy: testMailRemedy(se, acct)}
	}
	if err == nil && e.Pacing != nil {
		// Sent: a count that fails to be written costs at most one
		// message of the minute's budget, never the enrolment.
		_ = e.Pacing.Record(context.WithoutCancel(ctx), acct.Mailbox, 1)
	}
	return err
}

// SignIn connects acct's mailbox with the authorization code flow (PKCE),
// handing the sign-in URL to open, then enrols it as Enroll does. The
// sandbox, the bench and the tests use it against the fake Office 365,
// with FollowURL as the browser.
func (e Enroller) SignIn(ctx context.Context, acct account.Account, open func(authURL string) error) error {
	acct.Normalize()
	authURL, tokenURL, _ := acct.Endpoints()
	tok, err := Browser{
		ClientID: acct.ClientID, AuthURL: authURL, TokenURL: tokenURL, Scopes: acct.Scopes, LoginHint: acct.Mailbox,
	}.Run(ctx, open)
	if err != nil {
		return err
	}
	return e.Enroll(ctx, acct, tok, "", "")
}

func (e Enroller) transport() *submit.Transport {
	if e.Transport != nil {
		return e.Transport
	}
	return &submit.Transport{}
}

func (e Enroller) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// testMailRemedy is submit.Remedy, except that an app-only token refused by
// the mailbox (535 5.7.3) gets the Exchange admin steps app-only needs, and
// that a temporary refusal says to run the command again: submit.Remedy
// speaks of queued mail that the relay retries, but a test mail is sent
// once and, refused, leaves nothing stored that anything could retry.
func testMailRemedy(se *submit.SMTPError, acct account.Account) string {
	switch {
	case se.Code == 0 && se.Class == submit.ClassTransient:
		return fmt.Sprintf("could not reach %s: check the SMTP address (--smtp) and the network, then run the command again", acct.SMTPAddr)
	case se.Class == submit.ClassTransient || se.Class == submit.ClassThrottle:
		return "a temporary refusal; the test mail is not retried: run the command again in a few minutes"
	case se.Class == submit.ClassQuota:
		return "the mailbox is over its sending limit (10,000 recipients a day, 30 messages a minute): run the command again once it has room"
	}
	if acct.AppOnly && se.Class == submit.ClassAuth {
		return fmt.Sprintf("the mailbox refused the app's token. The app needs the SMTP.SendAsApp application permission with admin consent, "+
			"and an Exchange admin must register its service principal and give it the mailbox: "+
			"New-ServicePrincipal -AppId %s -ObjectId <object ID of the app's Enterprise application>; "+
			"Add-MailboxPermission -Identity %s -User <service principal ID from Get-ServicePrincipal> -AccessRights FullAccess; "+
			"then run authtool app --account %s again", acct.ClientID, acct.Mailbox, acct.Alias)
	}
	return submit.Remedy(se, acct.Mailbox)
}
