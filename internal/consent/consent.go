// Package consent is the one-time sign-in that gives Relay365 a refresh
// token for a mailbox, and the rule that an account is stored only after it
// has proved it can send: consent, then a test mail through Office 365 with
// the new token, then (and only then) the account and its sealed tokens go
// to the KV buckets. A failure at any step stores nothing.
//
// The browser flow is the OAuth 2.0 authorization code grant with PKCE
// (RFC 7636, S256) and a loopback redirect (RFC 8252 §7.3): a public client,
// no secret on the operator's machine. `authtool login` and `relay sandbox`
// both use it; the sandbox "opens the browser" by following the URL with an
// HTTP client against the fake Office 365, which approves at once.
package consent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/token"
)

// Browser describes one authorization code + PKCE sign-in.
type Browser struct {
	ClientID     string
	AuthURL      string
	TokenURL     string
	Scopes       []string
	LoginHint    string       // the mailbox, so the sign-in page asks for the right account
	RedirectPort int          // 0: a free port
	HTTPClient   *http.Client // for the token exchange; nil: http.DefaultClient
}

// Run listens on http://localhost:<port>/, hands the authorization URL to
// open (print it, start a browser, or follow it), and waits for the redirect
// carrying the code, checking state, then exchanges the code with the PKCE
// verifier. It returns when ctx ends, too.
func (b Browser) Run(ctx context.Context, open func(authURL string) error) (*oauth2.Token, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(b.RedirectPort)))
	if err != nil {
		return nil, fmt.Errorf("redirect listener on port %d: %w", b.RedirectPort, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	conf := &oauth2.Config{
		ClientID:    b.ClientID,
		Endpoint:    oauth2.Endpoint{AuthURL: b.AuthURL, TokenURL: b.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: fmt.Sprintf("http://localhost:%d/", port),
		Scopes:      b.Scopes,
	}
	state := randomString()
	verifier := oauth2.GenerateVerifier()
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	if b.LoginHint != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", b.LoginHint))
	}
	authURL := conf.AuthCodeURL(state, opts...)

	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var res result
		switch {
		case q.Get("state") != state:
			// Not ours (a stale tab, or a forged redirect): ignore it and
			// keep waiting for the real one.
			http.Error(w, "state does not match this sign-in; close this tab", http.StatusBadRequest)
			return
		case q.Get("error") != "":
			res.err = &AuthorizeError{Code: q.Get("error"), Description: q.Get("error_description")}
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
		return nil, fmt.Errorf("waiting for the sign-in redirect: %w", ctx.Err())
	case res = <-got:
	}
	if res.err != nil {
		return nil, res.err
	}
	hc := b.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	tok, err := conf.Exchange(context.WithValue(ctx, oauth2.HTTPClient, hc), res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("exchanging the authorization code: %w", token.Classify(err))
	}
	if tok.RefreshToken == "" {
		return nil, errors.New("the identity platform returned no refresh token: add the offline_access scope")
	}
	return tok, nil
}

// AuthorizeError is an error the authorization endpoint sent back through
// the redirect (the person declined, or the tenant blocks the app).
type AuthorizeError struct {
	Code        string
	Description string
}

func (e *AuthorizeError) Error() string {
	return fmt.Sprintf("sign-in refused: %s: %s", e.Code, e.Description)
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
