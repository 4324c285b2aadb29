// Package consent is the one-time sign-in that gives Relay365 a token for a
// mailbox, and the rule that an account is stored only after it has proved
// it can send: consent, then a test mail through Office 365 with the new
// token, then (and only then) the account and its sealed tokens go to the
// KV buckets.
//
// Four ways to a token, all ending in Enroller.Enroll:
//
//   - Browser: the OAuth 2.0 authorization code grant with PKCE (RFC 7636,
//     S256) and a loopback redirect (RFC 8252 §7.3): a public client, no
//     secret on the operator's machine. `authtool login` and `relay
//     sandbox` use it; the sandbox "opens the browser" by following the URL
//     with an HTTP client against the fake Office 365.
//   - Device: the device authorization grant (RFC 8628) for hosts without
//     a browser; it polls at the server's interval and handles
//     authorization_pending, slow_down, authorization_declined,
//     expired_token and bad_verification_code.
//   - AppToken: client credentials (RFC 6749 §4.4) for app-only accounts.
//   - Refresh: a refresh token brought from another tool, redeemed once.
//
// # Failure semantics
//
// Every failure is classified once into a typed error with a remedy a
// person can act on: *AuthorizeError (the authorize redirect's error),
// *DeviceError (a terminal device-flow answer), *CodeRefusedError (a code
// refused at its redemption), *token.IdentityError (the
// token endpoint, AADSTS codes), *TestMailError (the SMTP reply, e.g. 535
// 5.7.3 or 5.7.139 with the Exchange admin command). None of them stores
// anything. Once the test mail is accepted, Enroll's two writes (tokens,
// then account) run to their end even if the caller is interrupted, and a
// failed account write deletes the tokens again, so an account is never
// left half-stored.
package consent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/termsafe"
	"relay365/internal/token"
)

// Browser describes one authorization code + PKCE sign-in.
type Browser struct {
	ClientID string
	// ClientSecret authenticates a confidential client at the code
	// redemption (RFC 6749 §4.1.3, §2.3.1), on top of PKCE; "" for a
	// public client.
	ClientSecret string
	AuthURL      string
	TokenURL     string
	Scopes       []string
	LoginHint    string       // the mailbox, so the sign-in page asks for the right account
	RedirectPort int          // 0: a free port
	HTTPClient   *http.Client // for the token exchange; nil: http.DefaultClient
}

// Run listens on http://127.0.0.1:<port>/, hands the authorization URL to
// open (print it, start a browser, or follow it), and waits for the redirect
// carrying the code, checking state and, when the response names one, the
// issuer (RFC 9207), then exchanges the code with the PKCE verifier. It
// returns when ctx ends, too.
//
// The redirect names the loopback address, not "localhost" (RFC 8252
// §8.3): another local process could have bound localhost's other
// address (::1) and received the code.
func (b Browser) Run(ctx context.Context, open func(authURL string) error) (*oauth2.Token, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(b.RedirectPort)))
	if err != nil {
		return nil, fmt.Errorf("redirect listener on port %d: %w", b.RedirectPort, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	conf := &oauth2.Config{
		ClientID:     b.ClientID,
		ClientSecret: b.ClientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: b.AuthURL, TokenURL: b.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL:  fmt.Sprintf("http://127.0.0.1:%d/", port),
		Scopes:       withIdentityScopes(b.Scopes),
	}
	state := randomString()
	verifier := oauth2.GenerateVerifier()
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	if b.LoginHint != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", b.LoginHint))
	}
	if consentPrompt(b.AuthURL, conf.Scopes) {
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "consent"))
	}
	authURL := conf.AuthCodeURL(state, opts...)

	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	var foreign atomic.Int32 // redirects that carried another sign-in's state
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" || r.Method != http.MethodGet {
			// Only the redirect URI registered above carries the
			// authorization response (RFC 6749 §3.1.2, a query-mode GET;
			// RFC 8252 §7.3): a favicon or another local client is not
			// an answer, and not another sign-in's either.
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		var res result
		issErr := checkIssuer(q.Get("iss"), b.AuthURL)
		switch {
		case q.Get("state") != state:
			// Not ours (a stale tab, or a forged redirect): ignore it and
			// keep waiting for the real one.
			foreign.Add(1)
			http.Error(w, "state does not match this sign-in; close this tab", http.StatusBadRequest)
			return
		case issErr != nil:
			res.err = issErr
			http.Error(w, "this answer names another sign-in server; close this tab", http.StatusBadRequest)
		case q.Get("error") != "":
			res.err = newAuthorizeError(q.Get("error"), q.Get("error_description"))
			fmt.Fprintf(w, "Sign-in failed: %s. You can close this tab.\n", q.Get("error"))
		case q.Get("code") == "":
			http.Error(w, "no code in the redirect", http.StatusBadRequest)
			return
		default:
			res.code = q.Get("code")
			fmt.Fprintln(w, "Signed in. Relay365 is testing the mailbox now; you can close this tab.")
		}
		select {
		case got <- res:
		default:
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()

	if err := open(authURL); err != nil {
		return nil, err
	}
	var res result
	select {
	case <-ctx.Done():
		if n := foreign.Load(); n > 0 {
			return nil, fmt.Errorf("waiting for the sign-in redirect: %w; %d redirect(s) did arrive, but with the state of another sign-in "+
				"(a browser tab or sign-in URL of an earlier run) and were ignored: open the sign-in URL printed by this run", ctx.Err(), n)
		}
		return nil, fmt.Errorf("waiting for the sign-in redirect: %w", ctx.Err())
	case res = <-got:
	}
	if res.err != nil {
		return nil, res.err
	}
	hc := b.HTTPClient
	hc = token.NoRedirects(hc) // the code, its verifier and any client secret go in the body
	tok, err := conf.Exchange(context.WithValue(ctx, oauth2.HTTPClient, hc), res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("exchanging the authorization code: %w", codeRefused("authorization code", token.Classify(err)))
	}
	if tok.RefreshToken == "" {
		return nil, errNoRefreshToken
	}
	return tok, nil
}

// consentPrompt reports whether an authorization request for scopes must
// carry prompt=consent to be given a refresh token. OpenID Connect Core
// §11: a request for offline_access "MUST" use prompt=consent, and
// providers that keep to it (oidc-provider, for one) silently drop
// offline_access without it, so the code redeems to no refresh token.
// Entra issues refresh tokens without it, and there prompt=consent would
// show its consent page at every sign-in, which a user who may not
// consent to apps cannot pass even after an admin granted consent: it is
// sent to every authorize endpoint but Entra's
// (<authority>/<tenant>/oauth2/v2.0/authorize).
func consentPrompt(authURL string, scopes []string) bool {
	if !hasScope(scopes, "offline_access") {
		return false
	}
	u, err := url.Parse(authURL)
	return err != nil || !entraAuthorize.MatchString(u.Path)
}

// CodeRefusedError is an authorization or device code that the token
// endpoint refused with invalid_grant (AADSTS70008 expired, 54005 already
// redeemed, 500112 another redirect URI, 501481 another PKCE verifier).
// token.IdentityError's remedy for invalid_grant is about a refresh token
// (expired, revoked by a password change), which is not what a person
// signing in has to fix: a new sign-in is. It unwraps to the
// *token.IdentityError.
type CodeRefusedError struct {
	Kind     string // "authorization code", "device code"
	Identity *token.IdentityError
}

func (e *CodeRefusedError) Error() string {
	var codes strings.Builder
	for _, c := range e.Identity.Codes {
		codes.WriteString(" AADSTS" + strconv.Itoa(c))
	}
	return fmt.Sprintf("the identity platform refused the %s: %s%s: it expired, was already redeemed, or does not match this sign-in "+
		"(redirect URI, PKCE verifier): run the command again and finish the sign-in in one go", e.Kind, e.Identity.Err, codes.String())
}

func (e *CodeRefusedError) Unwrap() error { return e.Identity }

// codeRefused is ie, or a *CodeRefusedError for an invalid_grant answer to
// the redemption of a code, unless its codes say that consent (65001) or
// MFA / conditional access (50076, 50079, 53003, 530035) is what is
// missing: ie's remedy says so.
func codeRefused(kind string, ie *token.IdentityError) error {
	if ie.Err != "invalid_grant" || slices.ContainsFunc(ie.Codes, func(c int) bool {
		return slices.Contains([]int{65001, 50076, 50079, 53003, 530035}, c)
	}) {
		return ie
	}
	return &CodeRefusedError{Kind: kind, Identity: ie}
}

// AuthorizeError is an error the authorization endpoint sent back through
// the redirect (the person declined, or the tenant blocks the app),
// classified once, by its error code (RFC 6749 §4.1.2.1), into a remedy.
type AuthorizeError struct {
	Code        string
	Description string // the server's text (Entra: "AADSTS65004: User declined ..."); no secrets
	Remedy      string
}

func newAuthorizeError(code, description string) *AuthorizeError {
	// Both are the server's text, carried by the browser's redirect, and
	// end up on the operator's terminal: control sequences (ESC [ 2J, an
	// OSC title, C1, bidirectional controls, CR to overwrite the line)
	// are written as visible escapes, and the description is capped.
	e := &AuthorizeError{Code: termsafe.Line(code), Description: termsafe.Line(termsafe.Shorten(description, maxDescription))}
	switch code {
	case "access_denied", "consent_required":
		e.Remedy = "the sign-in was declined or the SMTP.Send permission was refused: run the command again and accept, " +
			"or have an admin grant consent for the app (Entra admin center > Enterprise applications > the app > Permissions > Grant admin consent)"
	case "interaction_required", "login_required":
		e.Remedy = "the identity platform wants an interactive sign-in (MFA or conditional access): run the command again and finish the sign-in in the browser"
	case "invalid_request", "unauthorized_client", "invalid_client", "unsupported_response_type":
		e.Remedy = "the app registration refused the request: check --client-id and --tenant, and that http://127.0.0.1 is a redirect URI " +
			"of the app's \"Mobile and desktop applications\" platform"
	case "temporarily_unavailable", "server_error":
		e.Remedy = "the identity platform had a temporary problem: run the command again"
	default:
		e.Remedy = "see the identity platform's message; run the command again once it is fixed"
	}
	return e
}

// maxDescription caps an error_description that is printed: Entra's are
// one or two sentences with trace and correlation ids.
const maxDescription = 512

func (e *AuthorizeError) Error() string {
	return fmt.Sprintf("sign-in refused: %s: %s; %s", e.Code, e.Description, e.Remedy)
}

func randomString() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// FollowURL is an opener for Browser.Run that visits the sign-in URL with
// an HTTP client instead of a person's browser. It suits an identity
// platform that signs in without a page (the fake Office 365 of the
// sandbox and the tests), never the real one.
func FollowURL(ctx context.Context) func(authURL string) error {
	return func(u string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("following the sign-in URL: %w", err)
		}
		resp.Body.Close()
		return nil
	}
}
