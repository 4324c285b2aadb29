package consent

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"golang.org/x/oauth2"

	"relay365/internal/account"
)

// identityScopes are asked for at sign-in on top of the account's scopes
// so the token response carries an ID token naming who signed in (OpenID
// Connect Core §3.1.2.1 "openid", §5.4 "profile" for preferred_username).
// They are not stored with the account: refreshes ask only for what
// sending needs.
var identityScopes = []string{"openid", "profile"}

func withIdentityScopes(scopes []string) []string {
	out := append([]string(nil), scopes...)
	for _, s := range identityScopes {
		if !hasScope(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// SignedInAs returns the account that signed in, as the token response
// names it: the ID token's preferred_username, upn or email claim, else
// the same claims of the access token when it is a JWT (Entra's are).
// There is no signature check: the tokens came straight from the token
// endpoint over TLS, which OpenID Connect Core §3.1.3.7 (6) allows as the
// proof of their origin. ok is false when neither names anyone.
func SignedInAs(tok *oauth2.Token) (user string, ok bool) {
	for _, jwt := range jwts(tok) {
		if u := userClaim(jwt); u != "" {
			return u, true
		}
	}
	return "", false
}

// TenantIDOf returns the directory (tenant) ID the token response names:
// the tid claim of the ID token, else of the access token when it is a
// JWT (Entra's are; Microsoft identity platform ID token and access token
// claims references, "tid"), lower case; ok is false when neither names
// one as a GUID. Like SignedInAs it checks no signature (the tokens came
// from the token endpoint over TLS) and reads only the payload's claims:
// the token itself is never returned, kept or logged.
func TenantIDOf(tok *oauth2.Token) (tid string, ok bool) {
	for _, jwt := range jwts(tok) {
		var claims struct {
			TID string `json:"tid"`
		}
		if jwtClaims(jwt, &claims) && account.IsTenantID(claims.TID) {
			return strings.ToLower(claims.TID), true
		}
	}
	return "", false
}

// jwts are the token response's tokens that may be JWTs, in the order
// their claims are trusted: the ID token, then the access token.
func jwts(tok *oauth2.Token) []string {
	if id, _ := tok.Extra("id_token").(string); id != "" {
		return []string{id, tok.AccessToken}
	}
	return []string{tok.AccessToken}
}

// jwtClaims decodes a JWT's payload into v; false when jwt is not a JWT
// (three dot-separated parts, a base64url JSON payload).
func jwtClaims(jwt string, v any) bool {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return false
	}
	return json.Unmarshal(payload, v) == nil
}

// userClaim reads the sign-in name from a JWT's payload, "" when it is not
// a JWT or names no one.
func userClaim(jwt string) string {
	var claims struct {
		PreferredUsername string `json:"preferred_username"`
		UPN               string `json:"upn"`
		UniqueName        string `json:"unique_name"`
		Email             string `json:"email"`
	}
	if !jwtClaims(jwt, &claims) {
		return ""
	}
	for _, v := range []string{claims.PreferredUsername, claims.UPN, claims.UniqueName, claims.Email} {
		if strings.Contains(v, "@") {
			return v
		}
	}
	return ""
}

// WrongMailboxError: someone signed in, but not as the mailbox the account
// is for (a browser signed in to another account, a shared device). The
// test mail would be refused or, worse, the account would send as someone
// else; nothing is stored.
type WrongMailboxError struct {
	SignedIn, Mailbox string
}

func (e *WrongMailboxError) Error() string {
	return fmt.Sprintf("signed in as %s, but --mailbox is %s: sign in as %s (a private browser window avoids an account the browser is already signed in with), or give --mailbox %s if that is the mailbox to send as",
		e.SignedIn, e.Mailbox, e.Mailbox, e.SignedIn)
}

// checkSignedIn refuses a delegated token for another user than mailbox.
// A token that names nobody passes: the test mail is then the proof.
func checkSignedIn(tok *oauth2.Token, mailbox string) error {
	user, ok := SignedInAs(tok)
	if ok && !strings.EqualFold(user, mailbox) {
		return &WrongMailboxError{SignedIn: user, Mailbox: mailbox}
	}
	return nil
}

// entraAuthorize matches an Entra authorize endpoint: <authority>/<tenant>/oauth2/v2.0/authorize.
var entraAuthorize = regexp.MustCompile(`^/([^/]+)/oauth2/v2\.0/authorize$`)

// IssuerMismatchError: the authorization response says it comes from
// another authorization server than the one the sign-in went to (RFC
// 9207 §2.4: the mix-up attack). The code is not redeemed.
type IssuerMismatchError struct {
	Got, Want string
}

func (e *IssuerMismatchError) Error() string {
	return fmt.Sprintf("the sign-in answer came from issuer %q, not from %s (RFC 9207): the code was not redeemed; sign in again, and check --authority/--auth-url", e.Got, e.Want)
}

// checkIssuer checks the iss parameter of an authorization response
// (RFC 9207 §2.4) against the authorize endpoint the person was sent to.
// Absent, nothing is checked (Entra does not always send it). Present, it
// must name that server: scheme and host the same, and for Entra's
// endpoints the issuer <authority>/<tenant>/v2.0 — where the tenant was
// given as a name (contoso.onmicrosoft.com, organizations), the issuer
// names the tenant's ID instead, so any tenant ID passes there.
func checkIssuer(iss, authURL string) error {
	if iss == "" {
		return nil
	}
	a, err := url.Parse(authURL)
	if err != nil {
		return err
	}
	want := a.Scheme + "://" + a.Host
	got, err := url.Parse(iss)
	if err != nil || got.Scheme != a.Scheme || got.Host != a.Host {
		return &IssuerMismatchError{Got: iss, Want: want}
	}
	m := entraAuthorize.FindStringSubmatch(a.Path)
	if m == nil {
		return nil // another server's layout: the same scheme and host is what can be known
	}
	tenant := m[1]
	wantPath := "/" + tenant + "/v2.0"
	if got.Path == wantPath {
		return nil
	}
	parts := strings.Split(strings.Trim(got.Path, "/"), "/")
	if !account.IsTenantID(tenant) && len(parts) == 2 && account.IsTenantID(parts[0]) && parts[1] == "v2.0" {
		return nil
	}
	return &IssuerMismatchError{Got: iss, Want: want + wantPath}
}
