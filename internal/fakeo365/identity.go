package fakeo365

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"relay365/internal/account"
)

// Grant types accepted by the token endpoint (the keys of TokenCalls).
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantClientCredentials = "client_credentials"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
)

const (
	devicePollSecs = 1
	idTokenTTL     = time.Hour
)

// principal is who a code or token speaks for.
type principal struct {
	tenant   string
	clientID string
	mailbox  string   // "" for app-only (client credentials) tokens
	scopes   []string // as requested
}

func (p principal) hasScope(scope string) bool {
	return slices.ContainsFunc(p.scopes, func(s string) bool { return strings.EqualFold(s, scope) })
}

type authCode struct {
	principal
	redirectURI string
	challenge   string // S256 PKCE challenge, "" without PKCE
	expires     time.Time
	redeemed    bool
}

type deviceCode struct {
	principal
	expires  time.Time
	polls    int
	declined bool
	redeemed bool
}

type accessToken struct {
	principal
	expires time.Time
	outlook bool // audience is an Outlook (Exchange Online) resource
}

type refreshToken struct {
	principal
	lastActive time.Time
	used       bool
	revoked    bool
}

// identityState is the identity platform half of the Server state, guarded
// by Server.mu.
type identityState struct {
	apps           map[string]string // client_id → secret
	codes          map[string]*authCode
	devices        map[string]*deviceCode
	access         map[string]*accessToken
	refresh        map[string]*refreshToken
	tokenCalls     map[string]int
	refreshReuses  int
	failTokenCalls int
	hangTokenCalls int
	hangFor        time.Duration
	denyConsent    bool
	slowDownPolls  int
	signInAs       string // a person who signs in with another account than the hint
	issuer         string // iss in the authorization response (RFC 9207); "" none
}

func newIdentityState() identityState {
	return identityState{
		apps:       make(map[string]string),
		codes:      make(map[string]*authCode),
		devices:    make(map[string]*deviceCode),
		access:     make(map[string]*accessToken),
		refresh:    make(map[string]*refreshToken),
		tokenCalls: make(map[string]int),
	}
}

func (s *Server) identityHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{tenant}/oauth2/v2.0/authorize", s.handleAuthorize)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.handleToken)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", s.handleDeviceCode)
	mux.HandleFunc("GET /devicelogin", s.handleDeviceLogin)
	return mux
}

// ---- authorize ------------------------------------------------------------

// handleAuthorize signs the user in without a page: it redirects straight
// back with a code (or with access_denied under DenyConsent).
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.pageError(w, r, newOAuthError(http.StatusBadRequest, "invalid_request", 90014, "The request is malformed: %v.", err))
		return
	}
	q := r.Form
	clientID, rawRedirect := q.Get("client_id"), q.Get("redirect_uri")
	if clientID == "" {
		s.pageError(w, r, errMissingParam("client_id"))
		return
	}
	if rawRedirect == "" {
		s.pageError(w, r, errMissingParam("redirect_uri"))
		return
	}
	redirect, err := url.Parse(rawRedirect)
	if err != nil || !redirect.IsAbs() {
		s.pageError(w, r, newOAuthError(http.StatusBadRequest, "invalid_request", 50011,
			"The redirect URI '%s' specified in the request is not a valid absolute URI.", rawRedirect))
		return
	}
	state := q.Get("state")
	if e := s.checkAuthorizeParams(q); e != nil {
		s.redirectError(w, r, redirect, state, e)
		return
	}

	mailbox := q.Get("login_hint")
	if mailbox == "" {
		mailbox = s.cfg.DefaultMailbox
	}
	s.mu.Lock()
	if s.signInAs != "" {
		mailbox = s.signInAs
	}
	iss := s.issuer
	s.mu.Unlock()
	if iss == "tenant" {
		iss = s.authority + "/" + r.PathValue("tenant") + "/v2.0"
	}
	code := newOpaqueToken()
	s.mu.Lock()
	s.codes[code] = &authCode{
		principal:   principal{tenant: r.PathValue("tenant"), clientID: clientID, mailbox: mailbox, scopes: strings.Fields(q.Get("scope"))},
		redirectURI: rawRedirect,
		challenge:   q.Get("code_challenge"),
		expires:     s.now().Add(s.cfg.AuthCodeTTL),
	}
	s.mu.Unlock()
	s.log.Debug().Str("client_id", clientID).Str("mailbox", mailbox).Msg("authorize: code issued")

	params := url.Values{"code": {code}}
	if state != "" {
		params.Set("state", state)
	}
	if iss != "" {
		params.Set("iss", iss)
	}
	redirectWith(w, r, redirect, params)
}

// checkAuthorizeParams validates an authorize request whose redirect_uri is
// usable, so that errors can travel back through it.
func (s *Server) checkAuthorizeParams(q url.Values) *oauthError {
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	switch {
	case q.Get("response_type") != "code":
		return newOAuthError(http.StatusBadRequest, "unsupported_response_type", 700054,
			"response_type '%s' is not enabled for the application.", q.Get("response_type"))
	case q.Get("scope") == "":
		return errMissingParam("scope")
	case challenge == "" && method != "":
		return errMissingParam("code_challenge")
	case challenge != "" && method != "S256":
		return newOAuthError(http.StatusBadRequest, "invalid_request", 501491,
			"Invalid code_challenge_method '%s'. Only S256 is supported.", method)
	}
	s.mu.Lock()
	deny := s.denyConsent
	s.mu.Unlock()
	if deny {
		return errConsentDeclined("access_denied")
	}
	return nil
}

// ---- devicecode -----------------------------------------------------------

type deviceAuthBody struct {
	DeviceCode      string `json:"device_code"`
	UserCode        string `json:"user_code"`
	VerificationURI string `json:"verification_uri"`
	ExpiresIn       int    `json:"expires_in"`
	Interval        int    `json:"interval"`
	Message         string `json:"message"`
}

func (s *Server) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.writeOAuthError(w, r, newOAuthError(http.StatusBadRequest, "invalid_request", 90014, "The request body is malformed: %v.", err))
		return
	}
	clientID, scope := r.PostForm.Get("client_id"), r.PostForm.Get("scope")
	switch {
	case clientID == "":
		s.writeOAuthError(w, r, errMissingParam("client_id"))
		return
	case scope == "":
		s.writeOAuthError(w, r, errMissingParam("scope"))
		return
	}
	body := deviceAuthBody{
		DeviceCode:      newOpaqueToken(),
		UserCode:        newUserCode(),
		VerificationURI: s.authority + "/devicelogin",
		ExpiresIn:       int(s.cfg.DeviceCodeTTL / time.Second),
		Interval:        devicePollSecs,
	}
	body.Message = fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
		body.VerificationURI, body.UserCode)

	s.mu.Lock()
	s.devices[body.DeviceCode] = &deviceCode{
		principal: principal{tenant: r.PathValue("tenant"), clientID: clientID, mailbox: s.deviceMailboxLocked(), scopes: strings.Fields(scope)},
		expires:   s.now().Add(s.cfg.DeviceCodeTTL),
	}
	s.mu.Unlock()
	s.log.Info().Str("client_id", clientID).Str("user_code", body.UserCode).Msg("device code issued")
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) handleDeviceLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!doctype html><title>Fake Office 365 device login</title>"+
		"<p>This is a fake identity platform: device codes are approved automatically "+
		"after %d polls, signed in as %s.</p>\n", s.cfg.DeviceApproveAfter, s.cfg.DefaultMailbox)
}

// ---- token ----------------------------------------------------------------

// tokenBody is the success answer of the token endpoint.
type tokenBody struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope"`
	ExpiresIn    int    `json:"expires_in"`
	ExtExpiresIn int    `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
}

// client is the caller of the token endpoint after client authentication.
type client struct {
	id           string
	confidential bool // authenticated with a registered secret
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.writeOAuthError(w, r, newOAuthError(http.StatusBadRequest, "invalid_request", 90014, "The request body is malformed: %v.", err))
		return
	}
	grant := r.PostForm.Get("grant_type")
	if hang := s.beginTokenCall(grant); hang > 0 && !s.sleep(r.Context(), hang) {
		return // the client went away; nobody to answer
	}
	if s.takeTokenFailure() {
		w.Header().Set("Retry-After", "1")
		s.writeOAuthError(w, r, errTransient())
		return
	}
	body, e := s.grantToken(r)
	if e != nil {
		s.writeOAuthError(w, r, e)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

// beginTokenCall counts the call and returns how long it must hang.
func (s *Server) beginTokenCall(grant string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenCalls[grant]++
	if s.hangTokenCalls == 0 {
		return 0
	}
	s.hangTokenCalls--
	return s.hangFor
}

func (s *Server) takeTokenFailure() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return takeOne(&s.failTokenCalls)
}

// sleep waits d, or less if the server closes; it reports false when ctx
// ended first.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	case <-ctx.Done():
		return false
	}
	return true
}

func (s *Server) grantToken(r *http.Request) (*tokenBody, *oauthError) {
	form := r.PostForm
	grant := form.Get("grant_type")
	if grant == "" {
		return nil, errMissingParam("grant_type")
	}
	tenant := r.PathValue("tenant")

	s.mu.Lock()
	defer s.mu.Unlock()
	c, e := s.authenticateClientLocked(tenant, r)
	if e != nil {
		return nil, e
	}
	var body *tokenBody
	switch grant {
	case GrantAuthorizationCode:
		body, e = s.redeemCodeLocked(c, form)
	case GrantRefreshToken:
		body, e = s.redeemRefreshLocked(c, form)
	case GrantClientCredentials:
		body, e = s.clientCredentialsLocked(tenant, c, form)
	case GrantDeviceCode:
		body, e = s.redeemDeviceCodeLocked(c, form)
	default:
		e = newOAuthError(http.StatusBadRequest, "unsupported_grant_type", 70003,
			"The app requested an unsupported grant type '%s'.", grant)
	}
	if e == nil {
		s.log.Info().Str("grant", grant).Str("tenant", tenant).Str("client_id", c.id).Msg("token issued")
	}
	return body, e
}

// authenticateClientLocked reads the client from the form (client_id,
// client_secret) or from HTTP Basic, as golang.org/x/oauth2 may use either.
// Unregistered clients without a secret are public clients and accepted.
func (s *Server) authenticateClientLocked(tenant string, r *http.Request) (client, *oauthError) {
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if user, pass, ok := r.BasicAuth(); ok {
		if id == "" {
			id = queryUnescape(user)
		}
		if secret == "" {
			secret = queryUnescape(pass)
		}
	}
	if id == "" {
		return client{}, errMissingParam("client_id")
	}
	registered, known := s.apps[id]
	switch {
	case secret != "" && !known:
		return client{}, errUnknownApp(id, tenant)
	case secret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(registered)) != 1:
		return client{}, newOAuthError(http.StatusUnauthorized, "invalid_client", 7000215,
			"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", id)
	case secret == "" && registered != "":
		return client{}, errSecretRequired()
	}
	return client{id: id, confidential: secret != ""}, nil
}

func errUnknownApp(id, tenant string) *oauthError {
	return newOAuthError(http.StatusBadRequest, "unauthorized_client", 700016,
		"Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", id, tenant)
}

func errSecretRequired() *oauthError {
	return newOAuthError(http.StatusUnauthorized, "invalid_client", 7000218,
		"The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
}

func (s *Server) redeemCodeLocked(c client, form url.Values) (*tokenBody, *oauthError) {
	raw := form.Get("code")
	if raw == "" {
		return nil, errMissingParam("code")
	}
	code := s.codes[raw]
	switch {
	case code == nil:
		return nil, errInvalidGrant(70000, "The provided value for the 'code' parameter is not valid.")
	case code.redeemed:
		return nil, errInvalidGrant(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.")
	case s.now().After(code.expires):
		return nil, errInvalidGrant(70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.")
	case code.clientID != c.id:
		return nil, errInvalidGrant(70000, "The provided authorization code was issued to a different client.")
	case form.Get("redirect_uri") != code.redirectURI:
		return nil, errInvalidGrant(500112, "The reply address '%s' does not match the reply address '%s' provided when requesting Authorization code.", form.Get("redirect_uri"), code.redirectURI)
	}
	if code.challenge != "" {
		verifier := form.Get("code_verifier")
		if verifier == "" {
			return nil, errMissingParam("code_verifier")
		}
		if s256(verifier) != code.challenge {
			return nil, errInvalidGrant(501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
		}
	}
	code.redeemed = true
	return s.issueLocked(code.principal, code.hasScope("offline_access")), nil
}

func (s *Server) redeemRefreshLocked(c client, form url.Values) (*tokenBody, *oauthError) {
	raw := form.Get("refresh_token")
	if raw == "" {
		return nil, errMissingParam("refresh_token")
	}
	rt := s.refresh[raw]
	if rt == nil {
		return nil, errInvalidGrant(70000, "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.").withSuberror("bad_token")
	}
	if rt.used {
		s.refreshReuses++
	}
	now := s.now()
	switch idle := now.Sub(rt.lastActive); {
	case rt.revoked:
		return nil, errInvalidGrant(50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.").withSuberror("bad_token")
	case idle > s.cfg.RefreshIdle:
		return nil, errInvalidGrant(700082, "The refresh token has expired due to inactivity. The token was issued on %s and was inactive for %s.",
			rt.lastActive.UTC().Format(time.RFC3339), s.cfg.RefreshIdle).withSuberror("bad_token")
	case rt.used && s.cfg.StrictRotation:
		return nil, errInvalidGrant(70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.").withSuberror("bad_token")
	case rt.clientID != c.id:
		return nil, errInvalidGrant(70000, "The provided refresh token was issued to a different client.").withSuberror("bad_token")
	}
	rt.used = true
	rt.lastActive = now
	p := rt.principal
	if scope := form.Get("scope"); scope != "" {
		p.scopes = strings.Fields(scope)
	}
	return s.issueLocked(p, true), nil
}

func (s *Server) clientCredentialsLocked(tenant string, c client, form url.Values) (*tokenBody, *oauthError) {
	if !c.confidential {
		if _, known := s.apps[c.id]; !known {
			return nil, errUnknownApp(c.id, tenant)
		}
		return nil, errSecretRequired()
	}
	scopes := strings.Fields(form.Get("scope"))
	if len(scopes) == 0 {
		return nil, errMissingParam("scope")
	}
	if len(scopes) != 1 || !strings.HasSuffix(scopes[0], "/.default") {
		return nil, newOAuthError(http.StatusBadRequest, "invalid_scope", 1002012,
			"The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", form.Get("scope"))
	}
	return s.issueLocked(principal{tenant: tenant, clientID: c.id, scopes: scopes}, false), nil
}

func (s *Server) redeemDeviceCodeLocked(c client, form url.Values) (*tokenBody, *oauthError) {
	raw := form.Get("device_code")
	if raw == "" {
		return nil, errMissingParam("device_code")
	}
	dc := s.devices[raw]
	switch {
	case dc == nil || dc.clientID != c.id:
		return nil, newOAuthError(http.StatusBadRequest, "bad_verification_code", 70018,
			"The provided value for the input parameter 'device_code' is not valid.")
	case dc.redeemed:
		return nil, errInvalidGrant(54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.")
	case s.now().After(dc.expires):
		return nil, newOAuthError(http.StatusBadRequest, "expired_token", 70019, "Verification code expired.")
	case dc.declined || s.denyConsent:
		dc.declined = true
		return nil, errConsentDeclined("authorization_declined")
	case takeOne(&s.slowDownPolls):
		// RFC 8628 §3.5: the client must add 5 seconds to its interval.
		return nil, newOAuthError(http.StatusBadRequest, "slow_down", 70016,
			"OAuth 2.0 device flow error. The client is polling too quickly; slow down.")
	case dc.polls < s.cfg.DeviceApproveAfter:
		dc.polls++
		return nil, newOAuthError(http.StatusBadRequest, "authorization_pending", 70016,
			"OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
	}
	dc.redeemed = true
	return s.issueLocked(dc.principal, dc.hasScope("offline_access")), nil
}

// issueLocked mints an access token for p, plus a refresh token for
// delegated grants when withRefresh, plus an id_token when scope has openid.
func (s *Server) issueLocked(p principal, withRefresh bool) *tokenBody {
	now := s.now()
	ttl := int(s.cfg.AccessTTL / time.Second)
	body := &tokenBody{
		TokenType:    "Bearer",
		Scope:        grantedScope(p.scopes),
		ExpiresIn:    ttl,
		ExtExpiresIn: ttl,
		AccessToken:  newAccessToken(),
	}
	s.access[body.AccessToken] = &accessToken{
		principal: p,
		expires:   now.Add(s.cfg.AccessTTL),
		outlook:   slices.ContainsFunc(p.scopes, isOutlookScope),
	}
	if p.mailbox == "" {
		return body // app-only tokens never get a refresh or id token
	}
	if withRefresh {
		body.RefreshToken = newOpaqueToken()
		s.refresh[body.RefreshToken] = &refreshToken{principal: p, lastActive: now}
	}
	if p.hasScope("openid") {
		body.IDToken = s.idToken(p, now)
	}
	return body
}

// oidcScopes are consumed by the identity platform and not echoed in the
// token's scope.
var oidcScopes = []string{"openid", "profile", "email", "offline_access"}

func grantedScope(scopes []string) string {
	var kept []string
	for _, sc := range scopes {
		if !slices.Contains(oidcScopes, strings.ToLower(sc)) {
			kept = append(kept, sc)
		}
	}
	if len(kept) == 0 {
		kept = scopes
	}
	return strings.Join(kept, " ")
}

// isOutlookScope reports whether scope names the Exchange Online resource
// with a permission usable for SMTP: SMTP.Send (delegated) or .default (app
// or delegated), on any cloud's outlook.* host.
func isOutlookScope(scope string) bool {
	u, err := url.Parse(scope)
	if err != nil || u.Scheme != "https" || !strings.HasPrefix(strings.ToLower(u.Host), "outlook.") {
		return false
	}
	switch strings.ToLower(u.Path) {
	case "/smtp.send", "/.default":
		return true
	}
	return false
}

// idToken returns an unsigned (alg "none") JWT with the claims a client
// needs to learn who signed in.
func (s *Server) idToken(p principal, now time.Time) string {
	seg := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	name, _, _ := strings.Cut(p.mailbox, "@")
	sum := sha256.Sum256([]byte(key(p.tenant) + "/" + key(p.mailbox)))
	oid := uuidFrom(sum[:16])
	claims := map[string]any{
		"aud":                p.clientID,
		"iss":                s.authority + "/" + p.tenant + "/v2.0",
		"iat":                now.Unix(),
		"nbf":                now.Unix(),
		"exp":                now.Add(idTokenTTL).Unix(),
		"name":               name,
		"preferred_username": p.mailbox,
		"email":              p.mailbox,
		"oid":                oid,
		"sub":                oid,
		"tid":                TenantID(p.tenant, p.mailbox),
		"ver":                "2.0",
	}
	return seg(map[string]string{"typ": "JWT", "alg": "none"}) + "." + seg(claims) + "."
}

// TenantID is the directory ID (a GUID) the fake's id_token names as tid
// for a sign-in at the tenant path segment tenant by mailbox, as Entra
// names the signed-in user's tenant whatever name the client used: a GUID
// is itself; a domain is a GUID derived from it (the same one for every
// sign-in at that domain, so an account configured with the tenant's
// domain and another with TenantID(domain) are one tenant); the
// multi-tenant names (organizations, common, consumers) name no tenant,
// and the tid is the one of the mailbox's home tenant: that of its domain
// for a work account; for a personal Microsoft account (any at consumers,
// one at a personal domain such as outlook.com at common) the one tenant
// all personal accounts share, account.ConsumerTenantID, as Entra names it.
func TenantID(tenant, mailbox string) string {
	_, domain, _ := strings.Cut(key(mailbox), "@")
	switch t := key(tenant); {
	case account.IsTenantID(t):
		return t
	case t == "consumers", t == "common" && personalDomains[domain]:
		return account.ConsumerTenantID
	case t == "organizations" || t == "common":
		tenant = domain
	}
	sum := sha256.Sum256([]byte("tenant/" + key(tenant)))
	return uuidFrom(sum[:16])
}

// personalDomains are domains of personal Microsoft accounts, which sign
// in at common (and consumers) but not at organizations.
var personalDomains = map[string]bool{"outlook.com": true, "hotmail.com": true, "live.com": true, "msn.com": true}

// ---- fault switches and observations ----------------------------------------

// RegisterApp registers a confidential client. It is needed for
// client_credentials; a registered app must then present its secret for every
// grant. Unregistered client IDs are accepted as public clients (no secret).
func (s *Server) RegisterApp(clientID, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[clientID] = secret
}

// FailNextTokenCalls makes the next n token-endpoint calls answer HTTP 503
// temporarily_unavailable (AADSTS90033) with Retry-After: 1.
func (s *Server) FailNextTokenCalls(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failTokenCalls = n
}

// HangNextTokenCalls makes the next n token calls wait d (or until Close, or
// until the client gives up) before answering normally.
func (s *Server) HangNextTokenCalls(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hangTokenCalls, s.hangFor = n, d
}

// RevokeAll revokes every refresh token issued so far (invalid_grant
// AADSTS50173), as a password reset or session revocation does. Access tokens
// stay valid until they expire, as real (self-contained) ones do.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		rt.revoked = true
	}
}

// RevokeMailbox revokes the refresh tokens (invalid_grant AADSTS50173) and
// the access tokens of one mailbox, as an admin's session revocation does
// for Exchange Online with continuous access evaluation: its authenticated
// SMTP connections are closed, and SMTP AUTH with a token issued before
// answers 535 5.7.3. Other mailboxes keep working.
func (s *Server) RevokeMailbox(mailbox string) {
	s.mu.Lock()
	var drop []*session
	for ss := range s.authed {
		if key(ss.user) == key(mailbox) {
			drop = append(drop, ss)
		}
	}
	defer func() {
		for _, ss := range drop {
			ss.conn.Conn().Close()
		}
	}()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		if key(rt.mailbox) == key(mailbox) {
			rt.revoked = true
		}
	}
	for tok, at := range s.access {
		if key(at.mailbox) == key(mailbox) {
			delete(s.access, tok)
		}
	}
}

// SignInAs makes the person at the sign-in page use mailbox, whatever the
// login hint (authorize) or DefaultMailbox (device flow) says, as a person
// signed in to the browser with another account would; "" undoes it.
func (s *Server) SignInAs(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signInAs = mailbox
}

func (s *Server) deviceMailboxLocked() string {
	if s.signInAs != "" {
		return s.signInAs
	}
	return s.cfg.DefaultMailbox
}

// AuthorizationIssuer makes authorize add iss to its redirect (RFC 9207):
// "tenant" for the issuer of the tenant in the request, as Entra's
// authority names it, any other value as it is (a mix-up attacker's
// issuer), "" for none.
func (s *Server) AuthorizationIssuer(iss string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issuer = iss
}

// DenyConsent makes authorize redirect with error=access_denied (AADSTS65004)
// and device-code polls answer authorization_declined.
func (s *Server) DenyConsent(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denyConsent = deny
}

// SlowDownNextPolls makes the next n device-code polls that would otherwise
// be pending or approved answer slow_down (RFC 8628 §3.5).
func (s *Server) SlowDownNextPolls(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slowDownPolls = n
}

// TokenCalls counts token-endpoint calls with that grant_type, whatever the
// answer (including injected failures).
func (s *Server) TokenCalls(grant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenCalls[grant]
}

// RefreshReuses counts presentations of an already-used refresh token, in
// both rotation modes.
func (s *Server) RefreshReuses() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshReuses
}

// AccessTokenValid reports whether tok is a live access token and for which
// mailbox ("" for app-only tokens).
func (s *Server) AccessTokenValid(tok string) (mailbox string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[tok]
	if at == nil || s.now().After(at.expires) {
		return "", false
	}
	return at.mailbox, true
}

// ---- small helpers ----------------------------------------------------------

// takeOne decrements a pending-fault counter and reports whether one was due.
func takeOne(n *int) bool {
	if *n <= 0 {
		return false
	}
	*n--
	return true
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand panics on failure)
	return b
}

// newOpaqueToken returns 32 random bytes, base64url encoded.
func newOpaqueToken() string { return base64.RawURLEncoding.EncodeToString(randomBytes(32)) }

// accessTokenBytes makes access tokens as long as Office 365's (1.5-2.5
// KB, docs/office365.md §1), so every XOAUTH2 exchange with the fake
// carries an initial response too long for a 512-octet AUTH line.
const accessTokenBytes = 1500

// newAccessToken is an opaque token of an Office 365 access token's size.
func newAccessToken() string {
	return "EwB" + base64.RawURLEncoding.EncodeToString(randomBytes(accessTokenBytes*3/4))
}

func newUUID() string { return uuidFrom(randomBytes(16)) }

// uuidFrom formats 16 bytes as a version 4 UUID.
func uuidFrom(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

// newUserCode returns a device-flow user code like "BCDF-GHJK".
func newUserCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	b := randomBytes(8)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:4]) + "-" + string(b[4:])
}

// s256 is the PKCE S256 transform of a code verifier.
func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func queryUnescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}
