package consent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"relay365/internal/termsafe"
	"relay365/internal/token"
)

// Device flow constants (RFC 8628).
const (
	grantDeviceCode = "urn:ietf:params:oauth:grant-type:device_code" // §3.4
	// defaultInterval is the polling interval when the server gives none
	// ("If no value is provided, clients MUST use 5 as the default", §3.2).
	defaultInterval = 5 * time.Second
	// slowDownStep is added to the interval on every slow_down answer
	// ("the interval MUST be increased by 5 seconds for this and all
	// subsequent requests", §3.5).
	slowDownStep = 5 * time.Second
	// defaultDeviceLife bounds the wait when the server gives no
	// expires_in; Entra's device codes live 900 s.
	defaultDeviceLife = 15 * time.Minute
)

// Device describes one device authorization grant (RFC 8628): for a host
// without a browser. The person opens the verification page on any device,
// types the user code and signs in (MFA and conditional access included)
// while this side polls the token endpoint.
type Device struct {
	ClientID string
	// ClientSecret authenticates a confidential client in the device
	// authorization request and every poll (RFC 8628 §3.1 and §3.4: "as
	// described in Section 3.2.1 of [RFC6749]"); "" for a public client.
	ClientSecret string
	DeviceURL    string // device authorization endpoint (…/oauth2/v2.0/devicecode)
	TokenURL     string
	Scopes       []string
	HTTPClient   *http.Client // nil: http.DefaultClient
	// Interval replaces the polling interval the server asks for. Tests
	// only: a real server answers slow_down to, or blocks, a client that
	// polls faster. 0: the server's interval (5 s when it gives none).
	Interval time.Duration
	// SlowDown is added to the interval on each slow_down; 0: 5 s.
	SlowDown time.Duration
}

// DeviceCode is what the person needs in order to sign in.
type DeviceCode struct {
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string // with the code filled in, when the server offers it
	Expires                 time.Time
	Interval                time.Duration // the polling interval in use
}

// Message is the instruction worded as Microsoft words it.
func (c DeviceCode) Message() string {
	return fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
		c.VerificationURI, c.UserCode)
}

// DeviceError is a device authorization that ended without a token
// (RFC 8628 §3.5): the person declined, the code expired, or the server
// does not know the device code. Nothing was issued, so nothing is stored.
type DeviceError struct {
	Err    string // authorization_declined, access_denied, expired_token or bad_verification_code
	Codes  []int  // AADSTS codes when the server sent them
	Remedy string
}

func (e *DeviceError) Error() string {
	var b strings.Builder
	b.WriteString("device sign-in ended: ")
	b.WriteString(e.Err)
	for _, c := range e.Codes {
		b.WriteString(" AADSTS" + strconv.Itoa(c))
	}
	b.WriteString(": ")
	b.WriteString(e.Remedy)
	return b.String()
}

// deviceError builds the DeviceError for a terminal answer, or nil when
// the answer is not one.
func deviceError(name string, codes []int) *DeviceError {
	e := &DeviceError{Err: name, Codes: codes}
	switch name {
	case "authorization_declined", "access_denied":
		e.Remedy = "the sign-in was declined or the SMTP.Send permission was refused on the verification page: " +
			"run the command again and accept, or have an admin grant consent for the app " +
			"(Entra admin center > Enterprise applications > the app > Permissions > Grant admin consent)"
	case "expired_token":
		e.Remedy = "the code expired before the sign-in finished (codes live 15 minutes): run the command again and enter the new code sooner"
	case "bad_verification_code":
		e.Remedy = "the identity platform does not know this device code (a code of another --client-id, or already used): run the command again"
	default:
		return nil
	}
	return e
}

// Run requests a device code (RFC 8628 §3.1), hands it to show (print it
// for the person), and polls the token endpoint (§3.4) at the interval
// until the person has signed in, declined, or the code expired, or until
// ctx ends. authorization_pending keeps polling, slow_down lengthens the
// interval (§3.5); temporary failures (network, 5xx, 429) keep polling too,
// so a blip does not throw away a sign-in in progress. A terminal answer is
// a *DeviceError, any other refusal an *token.IdentityError.
func (d Device) Run(ctx context.Context, show func(DeviceCode) error) (*oauth2.Token, error) {
	hc := d.HTTPClient
	hc = token.NoRedirects(hc) // the code, its verifier and any client secret go in the body
	conf := &oauth2.Config{
		ClientID: d.ClientID, Scopes: withIdentityScopes(d.Scopes),
		Endpoint: oauth2.Endpoint{DeviceAuthURL: d.DeviceURL, TokenURL: d.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
	}
	var authOpts []oauth2.AuthCodeOption
	if d.ClientSecret != "" {
		// x/oauth2's DeviceAuth sends only client_id: add the secret as
		// AuthStyleInParams does at the token endpoint.
		authOpts = append(authOpts, oauth2.SetAuthURLParam("client_secret", d.ClientSecret))
	}
	da, err := conf.DeviceAuth(context.WithValue(ctx, oauth2.HTTPClient, hc), authOpts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("requesting a device code: %w", ctx.Err())
		}
		return nil, fmt.Errorf("requesting a device code: %w", token.Classify(err))
	}
	if da.DeviceCode == "" || da.UserCode == "" || da.VerificationURI == "" {
		return nil, errors.New("the device authorization answer lacks device_code, user_code or verification_uri: is --device-url a device authorization endpoint?")
	}
	// The code and the URIs are the server's text and go to the
	// operator's terminal: control sequences in them are escaped.
	code := DeviceCode{
		UserCode: termsafe.Line(da.UserCode), VerificationURI: termsafe.Line(da.VerificationURI),
		VerificationURIComplete: termsafe.Line(da.VerificationURIComplete),
		Expires:                 da.Expiry, Interval: time.Duration(da.Interval) * time.Second,
	}
	if code.Expires.IsZero() {
		code.Expires = time.Now().Add(defaultDeviceLife)
	}
	if code.Interval <= 0 {
		code.Interval = defaultInterval
	}
	if d.Interval > 0 {
		code.Interval = d.Interval
	}
	step := d.SlowDown
	if step <= 0 {
		step = slowDownStep
	}
	if err := show(code); err != nil {
		return nil, err
	}

	wctx, cancel := context.WithDeadline(ctx, code.Expires)
	defer cancel()
	form := url.Values{"grant_type": {grantDeviceCode}, "client_id": {d.ClientID}, "device_code": {da.DeviceCode}}
	if d.ClientSecret != "" {
		form.Set("client_secret", d.ClientSecret) // RFC 8628 §3.4, RFC 6749 §2.3.1
	}
	interval := code.Interval
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for the device sign-in: %w", ctx.Err())
			}
			return nil, deviceError("expired_token", nil)
		case <-timer.C:
		}
		tok, err := pollToken(wctx, hc, d.TokenURL, form)
		if errors.Is(err, errBadTokenAnswer) {
			return nil, err
		}
		if err == nil {
			if tok.RefreshToken == "" && hasScope(d.Scopes, "offline_access") {
				return nil, errNoRefreshToken
			}
			return tok, nil
		}
		if wctx.Err() != nil {
			continue // the select above reports why
		}
		ie := token.Classify(err)
		wait := interval
		switch ie.Err {
		case "authorization_pending":
		case "slow_down":
			interval += step
			wait = interval
		default:
			if de := deviceError(ie.Err, ie.Codes); de != nil {
				return nil, de
			}
			if !ie.Temporary() {
				return nil, codeRefused("device code", ie)
			}
			// A throttled or unavailable server (429, 503) says when to
			// come back (Retry-After, RFC 9110 §10.2.3): polling sooner
			// only adds to its load. The interval itself stays.
			wait = max(interval, ie.RetryAfter)
		}
		timer.Reset(wait)
	}
}

var (
	errNoRefreshToken = errors.New("the identity platform returned no refresh token: --scopes must include offline_access, and the app must be allowed the refresh_token grant")
	errBadTokenAnswer = errors.New("the token endpoint answered 2xx without a usable access token: is --token-url an OAuth2 token endpoint?")
)

func hasScope(scopes []string, want string) bool {
	for _, s := range scopes {
		if strings.EqualFold(s, want) {
			return true
		}
	}
	return false
}

// pollToken is one Device Access Token Request (RFC 8628 §3.4). An error
// answer comes back as an *oauth2.RetrieveError, as x/oauth2 returns it, so
// token.Classify reads it; a success is parsed per RFC 6749 §5.1. Errors
// never quote the answer, which may hold tokens.
func pollToken(ctx context.Context, hc *http.Client, tokenURL string, form url.Values) (*oauth2.Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var eb struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &eb)
		return nil, &oauth2.RetrieveError{Response: resp, Body: body, ErrorCode: eb.Error}
	}
	var tb struct {
		AccessToken  string `json:"access_token"`
		TokenType    string `json:"token_type"`
		RefreshToken string `json:"refresh_token"`
		ExpiresIn    int64  `json:"expires_in"`
		IDToken      string `json:"id_token"`
	}
	if err := json.Unmarshal(body, &tb); err != nil || tb.AccessToken == "" {
		return nil, errBadTokenAnswer
	}
	tok := &oauth2.Token{AccessToken: tb.AccessToken, TokenType: tb.TokenType, RefreshToken: tb.RefreshToken, ExpiresIn: tb.ExpiresIn}
	if tb.IDToken != "" {
		tok = tok.WithExtra(map[string]any{"id_token": tb.IDToken}) // who signed in (SignedInAs)
	}
	if tb.ExpiresIn > 0 {
		tok.Expiry = time.Now().Add(time.Duration(tb.ExpiresIn) * time.Second)
	}
	return tok, nil
}
