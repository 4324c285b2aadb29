package fakeo365

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"relay365/internal/account"
)

func TestAuthCodePKCE(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)
	code, verifier := getAuthCode(t, conf, "ops@contoso.com")

	_, err := conf.Exchange(ctx, code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
	wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 501481)

	tok, err := conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange with the right verifier: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.TokenType != "Bearer" {
		t.Fatalf("token %+v: want Bearer access and refresh tokens", tok)
	}
	if got := tok.Extra("scope"); got != smtpScope {
		t.Errorf("scope = %v, want %q", got, smtpScope)
	}
	if got := tok.Extra("expires_in"); got != float64(3599) {
		t.Errorf("expires_in = %v, want 3599", got)
	}
	if got := tok.Extra("ext_expires_in"); got != float64(3599) {
		t.Errorf("ext_expires_in = %v, want 3599", got)
	}
	if mb, ok := s.AccessTokenValid(tok.AccessToken); !ok || mb != "ops@contoso.com" {
		t.Errorf("AccessTokenValid = %q, %v; want ops@contoso.com, true", mb, ok)
	}

	_, err = conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 54005)
	if n := s.TokenCalls(GrantAuthorizationCode); n != 3 {
		t.Errorf("TokenCalls(authorization_code) = %d, want 3", n)
	}
}

func TestAuthCodeChecks(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope)
	ctx := testContext(t)

	t.Run("missing verifier", func(t *testing.T) {
		code, _ := getAuthCode(t, conf, testMailbox)
		_, err := conf.Exchange(ctx, code)
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_request", 900144)
	})
	t.Run("redirect_uri mismatch", func(t *testing.T) {
		code, verifier := getAuthCode(t, conf, testMailbox)
		other := *conf
		other.RedirectURL = "http://127.0.0.1:1/other"
		_, err := other.Exchange(ctx, code, oauth2.VerifierOption(verifier))
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 500112)
	})
	t.Run("unknown code", func(t *testing.T) {
		_, err := conf.Exchange(ctx, "no-such-code", oauth2.VerifierOption(oauth2.GenerateVerifier()))
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 70000)
	})
	t.Run("no refresh token without offline_access", func(t *testing.T) {
		tok := signIn(t, conf, testMailbox)
		if tok.RefreshToken != "" {
			t.Errorf("refresh_token %q issued without offline_access", tok.RefreshToken)
		}
	})
	t.Run("default mailbox without login_hint", func(t *testing.T) {
		verifier := oauth2.GenerateVerifier()
		q := authorize(t, conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
		tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		if mb, _ := s.AccessTokenValid(tok.AccessToken); mb != testMailbox {
			t.Errorf("mailbox = %q, want default %q", mb, testMailbox)
		}
	})
}

func TestIDToken(t *testing.T) {
	s := startServer(t, Config{})
	tok := signIn(t, oauthConfig(s, smtpScope, "openid", "offline_access"), "ops@contoso.com")
	raw, _ := tok.Extra("id_token").(string)
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("id_token %q is not a JWT", raw)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		PreferredUsername string `json:"preferred_username"`
		TID               string `json:"tid"`
		Aud               string `json:"aud"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.PreferredUsername != "ops@contoso.com" || claims.TID != TenantID(testTenant, "") || claims.Aud != testClientID {
		t.Errorf("id_token claims %+v", claims)
	}
	// One tenant by its domain or its GUID; the multi-tenant names are
	// the mailbox's home tenant.
	id := TenantID(testTenant, "")
	if !account.IsTenantID(id) || TenantID(strings.ToUpper(id), "") != id || TenantID("organizations", "ops@Contoso.onmicrosoft.com") != id ||
		TenantID("common", "ops@fabrikam.com") == id {
		t.Errorf("TenantID: %s for %s, %s for its GUID, %s for organizations", id, testTenant, TenantID(id, ""), TenantID("organizations", "ops@contoso.onmicrosoft.com"))
	}
}

func TestAuthorizeErrors(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope)

	t.Run("plain PKCE", func(t *testing.T) {
		q := authorize(t, conf.AuthCodeURL("st", oauth2.SetAuthURLParam("code_challenge", "abc"),
			oauth2.SetAuthURLParam("code_challenge_method", "plain")))
		if q.Get("error") != "invalid_request" || !strings.HasPrefix(q.Get("error_description"), "AADSTS501491:") || q.Get("state") != "st" {
			t.Errorf("redirect query %v: want invalid_request AADSTS501491 with state", q)
		}
	})
	t.Run("consent denied", func(t *testing.T) {
		s.DenyConsent(true)
		defer s.DenyConsent(false)
		q := authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
		if q.Get("error") != "access_denied" || !strings.HasPrefix(q.Get("error_description"), "AADSTS65004:") ||
			q.Get("state") != "st" || q.Get("code") != "" {
			t.Errorf("redirect query %v: want access_denied AADSTS65004 with state and no code", q)
		}
	})
	t.Run("no redirect_uri", func(t *testing.T) {
		resp, err := http.Get(s.AuthURL(testTenant) + "?client_id=x&response_type=code&scope=openid")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status %d, want 400", resp.StatusCode)
		}
	})
}

func TestRefreshRotation(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)
	first := signIn(t, conf, testMailbox)

	second, err := refresh(ctx, conf, first.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if second.RefreshToken == "" || second.RefreshToken == first.RefreshToken || second.AccessToken == first.AccessToken {
		t.Fatalf("refresh did not rotate: %q → %q", first.RefreshToken, second.RefreshToken)
	}
	if mb, ok := s.AccessTokenValid(second.AccessToken); !ok || mb != testMailbox {
		t.Errorf("refreshed access token: %q, %v", mb, ok)
	}
	// Like real Entra, the old refresh token keeps working by default.
	if _, err := refresh(ctx, conf, first.RefreshToken); err != nil {
		t.Errorf("reuse of the old refresh token in non-strict mode: %v", err)
	}
	if n := s.RefreshReuses(); n != 1 {
		t.Errorf("RefreshReuses = %d, want 1", n)
	}
	if n := s.TokenCalls(GrantRefreshToken); n != 2 {
		t.Errorf("TokenCalls(refresh_token) = %d, want 2", n)
	}
}

func TestRefreshStrictRotation(t *testing.T) {
	s := startServer(t, Config{StrictRotation: true})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)
	first := signIn(t, conf, testMailbox)
	second, err := refresh(ctx, conf, first.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	_, err = refresh(ctx, conf, first.RefreshToken)
	body := wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 70008)
	if body.Suberror != "bad_token" {
		t.Errorf("suberror = %q, want bad_token", body.Suberror)
	}
	if n := s.RefreshReuses(); n != 1 {
		t.Errorf("RefreshReuses = %d, want 1", n)
	}
	if _, err := refresh(ctx, conf, second.RefreshToken); err != nil {
		t.Errorf("newest refresh token: %v", err)
	}
}

func TestRefreshFailures(t *testing.T) {
	clock := newFakeClock()
	s := startServer(t, Config{Now: clock.Now, RefreshIdle: 24 * time.Hour})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)

	t.Run("revoked", func(t *testing.T) {
		tok := signIn(t, conf, testMailbox)
		s.RevokeAll()
		_, err := refresh(ctx, conf, tok.RefreshToken)
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 50173)
		if _, err := refresh(ctx, conf, signIn(t, conf, testMailbox).RefreshToken); err != nil {
			t.Errorf("token issued after RevokeAll: %v", err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		tok := signIn(t, conf, testMailbox)
		clock.Advance(23 * time.Hour)
		tok, err := refresh(ctx, conf, tok.RefreshToken)
		if err != nil {
			t.Fatalf("refresh within the idle window: %v", err)
		}
		clock.Advance(24*time.Hour + time.Second)
		_, err = refresh(ctx, conf, tok.RefreshToken)
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 700082)
	})
	t.Run("unknown", func(t *testing.T) {
		_, err := refresh(ctx, conf, "not-a-refresh-token")
		wantOAuthError(t, err, http.StatusBadRequest, "invalid_grant", 70000)
	})
	t.Run("access token expiry", func(t *testing.T) {
		tok := signIn(t, conf, testMailbox)
		clock.Advance(3599 * time.Second)
		if _, ok := s.AccessTokenValid(tok.AccessToken); !ok {
			t.Error("access token dead before expires_in")
		}
		clock.Advance(time.Second + time.Nanosecond)
		if _, ok := s.AccessTokenValid(tok.AccessToken); ok {
			t.Error("access token alive after expires_in")
		}
	})
}

func TestFailNextTokenCalls(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)
	tok := signIn(t, conf, testMailbox)

	s.FailNextTokenCalls(1)
	_, err := refresh(ctx, conf, tok.RefreshToken)
	wantOAuthError(t, err, http.StatusServiceUnavailable, "temporarily_unavailable", 90033)
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response.Header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After = %q, want 1", re.Response.Header.Get("Retry-After"))
	}
	if _, err := refresh(ctx, conf, tok.RefreshToken); err != nil {
		t.Errorf("refresh after the injected failure: %v", err)
	}
	if n := s.TokenCalls(GrantRefreshToken); n != 2 {
		t.Errorf("TokenCalls(refresh_token) = %d, want 2", n)
	}
}

func TestHangNextTokenCalls(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	tok := signIn(t, conf, testMailbox)

	s.HangNextTokenCalls(1, time.Hour)
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := refresh(short, conf, tok.RefreshToken); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging call: got %v, want deadline exceeded", err)
	}
	if _, err := refresh(testContext(t), conf, tok.RefreshToken); err != nil {
		t.Errorf("call after the hang: %v", err)
	}
}

func TestCloseWakesHangingTokenCall(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	tok := signIn(t, conf, testMailbox)

	s.HangNextTokenCalls(1, time.Hour)
	done := make(chan error, 1)
	go func() {
		_, err := refresh(context.Background(), conf, tok.RefreshToken)
		done <- err
	}()
	waitFor(t, "the token call to arrive", func() bool { return s.TokenCalls(GrantRefreshToken) == 1 })
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("hanging token call still running after Close")
	}
}

func TestClientCredentials(t *testing.T) {
	s := startServer(t, Config{})
	s.RegisterApp("daemon-app", "s3cret~value")
	ctx := testContext(t)
	cc := func(id, secret string, style oauth2.AuthStyle, scope string) (*oauth2.Token, error) {
		c := clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: s.TokenURL(testTenant),
			Scopes: []string{scope}, AuthStyle: style}
		return c.Token(ctx)
	}

	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInParams, oauth2.AuthStyleInHeader} {
		tok, err := cc("daemon-app", "s3cret~value", style, appScope)
		if err != nil {
			t.Fatalf("client_credentials (auth style %d): %v", style, err)
		}
		if tok.RefreshToken != "" {
			t.Errorf("client_credentials issued a refresh token")
		}
		if mb, ok := s.AccessTokenValid(tok.AccessToken); !ok || mb != "" {
			t.Errorf("app token: mailbox %q, valid %v; want \"\", true", mb, ok)
		}
	}

	_, err := cc("daemon-app", "wrong", oauth2.AuthStyleInParams, appScope)
	wantOAuthError(t, err, http.StatusUnauthorized, "invalid_client", 7000215)
	_, err = cc("unknown-app", "whatever", oauth2.AuthStyleInParams, appScope)
	wantOAuthError(t, err, http.StatusBadRequest, "unauthorized_client", 700016)
	_, err = cc("daemon-app", "s3cret~value", oauth2.AuthStyleInParams, smtpScope)
	wantOAuthError(t, err, http.StatusBadRequest, "invalid_scope", 1002012)
	if n := s.TokenCalls(GrantClientCredentials); n != 5 {
		t.Errorf("TokenCalls(client_credentials) = %d, want 5", n)
	}
}

func TestRegisteredAppNeedsSecret(t *testing.T) {
	s := startServer(t, Config{})
	s.RegisterApp(testClientID, "s3cret")
	conf := oauthConfig(s, smtpScope)
	code, verifier := getAuthCode(t, conf, testMailbox)
	_, err := conf.Exchange(testContext(t), code, oauth2.VerifierOption(verifier))
	wantOAuthError(t, err, http.StatusUnauthorized, "invalid_client", 7000218)

	conf.ClientSecret = "s3cret"
	if _, err := conf.Exchange(testContext(t), code, oauth2.VerifierOption(verifier)); err != nil {
		t.Errorf("confidential client with its secret: %v", err)
	}
}

// startDeviceFlow asks for a device code and checks the answer.
func startDeviceFlow(t *testing.T, s *Server) deviceAuthBody {
	t.Helper()
	resp, err := http.PostForm(s.DeviceURL(testTenant), url.Values{
		"client_id": {testClientID}, "scope": {smtpScope + " offline_access"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var da deviceAuthBody
	if err := json.NewDecoder(resp.Body).Decode(&da); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("devicecode: HTTP %d, %v", resp.StatusCode, err)
	}
	if da.DeviceCode == "" || len(da.UserCode) != 9 || da.VerificationURI != s.AuthorityURL()+"/devicelogin" ||
		da.ExpiresIn != 900 || da.Interval != 1 || !strings.Contains(da.Message, da.UserCode) {
		t.Fatalf("devicecode answer %+v", da)
	}
	return da
}

func pollDevice(t *testing.T, s *Server, deviceCode string) (int, tokenAnswer) {
	t.Helper()
	status, ans, _ := postForm(t, s.TokenURL(testTenant), url.Values{
		"grant_type": {GrantDeviceCode}, "client_id": {testClientID}, "device_code": {deviceCode}})
	return status, ans
}

func TestDeviceFlow(t *testing.T) {
	s := startServer(t, Config{})
	da := startDeviceFlow(t, s)
	for i := range 2 {
		status, ans := pollDevice(t, s, da.DeviceCode)
		checkErrorBody(t, status, ans.errorBody, http.StatusBadRequest, "authorization_pending", 70016)
		if ans.AccessToken != "" {
			t.Fatalf("poll %d issued a token while pending", i)
		}
	}
	status, ans := pollDevice(t, s, da.DeviceCode)
	if status != http.StatusOK || ans.AccessToken == "" || ans.RefreshToken == "" {
		t.Fatalf("third poll: HTTP %d %+v, want tokens", status, ans)
	}
	if mb, ok := s.AccessTokenValid(ans.AccessToken); !ok || mb != testMailbox {
		t.Errorf("device token mailbox %q, %v; want %q", mb, ok, testMailbox)
	}
	status, ans = pollDevice(t, s, da.DeviceCode)
	checkErrorBody(t, status, ans.errorBody, http.StatusBadRequest, "invalid_grant", 54005)
	status, ans = pollDevice(t, s, "no-such-device-code")
	checkErrorBody(t, status, ans.errorBody, http.StatusBadRequest, "bad_verification_code", 70018)
	if n := s.TokenCalls(GrantDeviceCode); n != 5 {
		t.Errorf("TokenCalls(device_code) = %d, want 5", n)
	}
}

func TestDeviceFlowDeclinedAndExpired(t *testing.T) {
	clock := newFakeClock()
	s := startServer(t, Config{Now: clock.Now})

	s.DenyConsent(true)
	da := startDeviceFlow(t, s)
	status, ans := pollDevice(t, s, da.DeviceCode)
	checkErrorBody(t, status, ans.errorBody, http.StatusBadRequest, "authorization_declined", 65004)
	s.DenyConsent(false)

	da = startDeviceFlow(t, s)
	clock.Advance(901 * time.Second)
	status, ans = pollDevice(t, s, da.DeviceCode)
	checkErrorBody(t, status, ans.errorBody, http.StatusBadRequest, "expired_token", 70019)
}

// TestDeviceFlowOAuth2Library checks compatibility with x/oauth2's poller.
func TestDeviceFlowOAuth2Library(t *testing.T) {
	s := startServer(t, Config{DeviceApproveAfter: -1})
	conf := oauthConfig(s, smtpScope, "offline_access")
	ctx := testContext(t)
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("DeviceAccessToken: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Errorf("token %+v", tok)
	}
}
