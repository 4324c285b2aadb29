package consent_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue/queuetest"
	"relay365/internal/token"
)

func jwt(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(b) + "."
}

func TestSignedInAs(t *testing.T) {
	for name, tc := range map[string]struct {
		tok  *oauth2.Token
		user string
		ok   bool
	}{
		"id token preferred_username": {(&oauth2.Token{AccessToken: "opaque"}).WithExtra(map[string]any{"id_token": jwt(map[string]any{"preferred_username": "alerts@contoso.com"})}), "alerts@contoso.com", true},
		"access token upn (Entra)":    {&oauth2.Token{AccessToken: jwt(map[string]any{"upn": "Alerts@Contoso.com", "aud": "https://outlook.office.com"})}, "Alerts@Contoso.com", true},
		"opaque tokens":               {&oauth2.Token{AccessToken: "EwBAA.opaque"}, "", false},
		"a claim without a domain":    {&oauth2.Token{AccessToken: jwt(map[string]any{"preferred_username": "alerts"})}, "", false},
	} {
		user, ok := consent.SignedInAs(tc.tok)
		if user != tc.user || ok != tc.ok {
			t.Errorf("%s: %q %v, want %q %v", name, user, ok, tc.user, tc.ok)
		}
	}
}

// TestTenantIDOf: the tenant ID is the tid claim, a GUID, of the ID token
// or else of a JWT access token (Entra's), lower case; anything else names
// no tenant.
func TestTenantIDOf(t *testing.T) {
	const id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	for name, tc := range map[string]struct {
		tok *oauth2.Token
		tid string
	}{
		"id token":            {(&oauth2.Token{AccessToken: "opaque"}).WithExtra(map[string]any{"id_token": jwt(map[string]any{"tid": strings.ToUpper(id)})}), id},
		"access token":        {&oauth2.Token{AccessToken: jwt(map[string]any{"tid": id, "aud": "https://outlook.office.com"})}, id},
		"id token first":      {(&oauth2.Token{AccessToken: jwt(map[string]any{"tid": "00000000-0000-0000-0000-000000000000"})}).WithExtra(map[string]any{"id_token": jwt(map[string]any{"tid": id})}), id},
		"a domain is no id":   {&oauth2.Token{AccessToken: jwt(map[string]any{"tid": "contoso.onmicrosoft.com"})}, ""},
		"opaque tokens":       {&oauth2.Token{AccessToken: "EwBAA.opaque"}, ""},
		"no tid in the token": {&oauth2.Token{AccessToken: jwt(map[string]any{"upn": "alerts@contoso.com"})}, ""},
	} {
		tid, ok := consent.TenantIDOf(tc.tok)
		if tid != tc.tid || ok != (tc.tid != "") {
			t.Errorf("%s: %q %v, want %q", name, tid, ok, tc.tid)
		}
	}
}

// TestSignInAsAnotherUserStoresNothing: a person signs in with another
// account than --mailbox (the browser was already signed in): the error
// names both, no test mail goes, nothing is stored.
func TestSignInAsAnotherUserStoresNothing(t *testing.T) {
	ctx := testCtx(t)
	f := startFake(t, fakeo365.Config{})
	f.SignInAs("someone.else@contoso.com")
	q := queuetest.Start(t)
	reg, store := stores(t, ctx, q)
	acct := f.Account("alerts", mailbox, tenant)
	err := consent.Enroller{Accounts: reg, Store: store}.SignIn(ctx, acct, consent.FollowURL(ctx))
	var wrong *consent.WrongMailboxError
	if !errors.As(err, &wrong) || !strings.Contains(err.Error(), "signed in as someone.else@contoso.com, but --mailbox is "+mailbox) {
		t.Fatalf("SignIn = %v, want a WrongMailboxError naming both", err)
	}
	if n := len(f.Messages()); n != 0 {
		t.Fatalf("%d test mails sent for the wrong user", n)
	}
	if _, err := reg.Get(ctx, "alerts"); err == nil {
		t.Fatal("the account was stored")
	}
	f.SignInAs("")
	if err := (consent.Enroller{Accounts: reg, Store: store}).SignIn(ctx, acct, consent.FollowURL(ctx)); err != nil {
		t.Fatalf("signing in as the mailbox: %v", err)
	}
}

// TestAuthorizationResponseIssuer (RFC 9207): an iss naming the server the
// person was sent to passes; one naming another server stops the sign-in
// before the code is redeemed.
func TestAuthorizationResponseIssuer(t *testing.T) {
	ctx := testCtx(t)
	f := startFake(t, fakeo365.Config{})
	q := queuetest.Start(t)
	reg, store := stores(t, ctx, q)
	acct := f.Account("alerts", mailbox, tenant)
	f.AuthorizationIssuer("tenant")
	if err := (consent.Enroller{Accounts: reg, Store: store}).SignIn(ctx, acct, consent.FollowURL(ctx)); err != nil {
		t.Fatalf("the right issuer: %v", err)
	}
	before := f.TokenCalls("authorization_code")
	f.AuthorizationIssuer("https://login.attacker.example/" + tenant + "/v2.0")
	err := consent.Enroller{Accounts: reg, Store: store}.SignIn(ctx, acct, consent.FollowURL(ctx))
	var mix *consent.IssuerMismatchError
	if !errors.As(err, &mix) {
		t.Fatalf("another issuer: %v, want an IssuerMismatchError", err)
	}
	if f.TokenCalls("authorization_code") != before {
		t.Fatal("the code was redeemed despite the wrong issuer")
	}
}

// TestRedirectIsTheLoopbackAddress: the redirect_uri the person's browser
// is sent back to is http://127.0.0.1:<port>/ (RFC 8252 §8.3), never
// localhost, which another process could hold on ::1.
func TestRedirectIsTheLoopbackAddress(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var redirect string
	_, _ = consent.Browser{ClientID: clientID, AuthURL: "http://127.0.0.1:1/" + tenant + "/oauth2/v2.0/authorize", TokenURL: "http://127.0.0.1:1/token",
		Scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"}}.Run(ctx, func(u string) error {
		pu, err := url.Parse(u)
		if err != nil {
			return err
		}
		redirect = pu.Query().Get("redirect_uri")
		if sc := pu.Query().Get("scope"); !strings.Contains(sc, "openid") || !strings.Contains(sc, "profile") {
			t.Errorf("scope %q lacks openid profile (who signed in)", sc)
		}
		cancel()
		return nil
	})
	ru, err := url.Parse(redirect)
	if err != nil || ru.Scheme != "http" || !strings.HasPrefix(ru.Host, "127.0.0.1:") || ru.Path != "/" {
		t.Fatalf("redirect_uri %q, want http://127.0.0.1:<port>/", redirect)
	}
}

// TestConsentPromptOutsideEntra: an authorization request that asks for
// offline_access says prompt=consent to any server but Entra, since
// OpenID Connect Core §11 requires it and strict providers (oidc-provider)
// drop offline_access, and so the refresh token, without it; Entra's
// endpoints never get it (it would show the consent page at every sign-in
// and stop users who may not consent to apps).
func TestConsentPromptOutsideEntra(t *testing.T) {
	offline := []string{"smtp", "offline_access"}
	for _, tc := range []struct {
		name, authURL string
		scopes        []string
		prompt        string
	}{
		{"Entra", "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/authorize", []string{"https://outlook.office.com/SMTP.Send", "offline_access"}, ""},
		{"Entra, national cloud", "https://login.microsoftonline.us/organizations/oauth2/v2.0/authorize", []string{"https://outlook.office365.us/SMTP.Send", "offline_access"}, ""},
		{"another OpenID Provider", "http://127.0.0.1:1/auth", offline, "consent"},
		{"Keycloak's layout", "https://sso.example.org/realms/mail/protocol/openid-connect/auth", offline, "consent"},
		{"no offline_access asked", "http://127.0.0.1:1/auth", []string{"smtp"}, ""},
	} {
		ctx, cancel := context.WithCancel(testCtx(t))
		var got *url.URL
		_, _ = consent.Browser{ClientID: clientID, AuthURL: tc.authURL, TokenURL: "http://127.0.0.1:1/token", Scopes: tc.scopes}.Run(ctx, func(u string) error {
			got, _ = url.Parse(u)
			cancel()
			return nil
		})
		cancel()
		if got == nil {
			t.Fatalf("%s: no authorization URL", tc.name)
		}
		if p := got.Query().Get("prompt"); p != tc.prompt {
			t.Errorf("%s: prompt=%q, want %q (%s)", tc.name, p, tc.prompt, got)
		}
	}
}

func stores(t *testing.T, ctx context.Context, q *queuetest.Env) (*account.Registry, *token.Store) {
	t.Helper()
	reg, err := account.OpenRegistry(ctx, q.JS)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.NewKeyring(token.NamedKey{ID: "k1", Key: make([]byte, token.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, q.JS, keys)
	if err != nil {
		t.Fatal(err)
	}
	return reg, store
}

// TestRedirectListenerAnswersOnlyTheRedirectURI: the loopback listener
// takes the authorization response at the redirect URI it registered
// (path "/", RFC 8252 §7.3, RFC 6749 §3.1.2) and nowhere else: a request
// for another path (a favicon, another local client) gets 404 even when it
// carries this sign-in's state and a code, and the sign-in goes on.
func TestRedirectListenerAnswersOnlyTheRedirectURI(t *testing.T) {
	f := startFake(t, fakeo365.Config{})
	ctx := testCtx(t)
	follow := consent.FollowURL(ctx)
	tok, err := consent.Browser{ClientID: clientID, AuthURL: f.AuthURL(tenant), TokenURL: f.TokenURL(tenant),
		Scopes: account.DefaultDelegatedScopes(), LoginHint: mailbox}.Run(ctx, func(u string) error {
		pu, err := url.Parse(u)
		if err != nil {
			return err
		}
		redirect, state := pu.Query().Get("redirect_uri"), pu.Query().Get("state")
		for _, stray := range []string{"favicon.ico", "favicon.ico?" + url.Values{"state": {state}, "code": {"forged"}}.Encode()} {
			resp, err := http.Get(redirect + stray)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %s, want 404", stray, resp.Status)
			}
		}
		return follow(u)
	})
	if err != nil {
		t.Fatalf("the sign-in after stray requests: %v", err)
	}
	if tok.RefreshToken == "" {
		t.Fatal("no refresh token")
	}
}
