package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// IdentityError is the one typed error at the identity platform boundary.
// It is built once, by Classify, from the answer's error and error_codes
// (never from the description text) and carries the class that decides
// what the relay does. Its message holds no description text, no tokens
// and no secrets, so it may be logged and stored as Record.LastError.
type IdentityError struct {
	Err        string        // OAuth "error" field, e.g. invalid_grant
	Codes      []int         // "error_codes", e.g. [50173]
	Status     int           // HTTP status, 0 when no answer arrived
	Class      State         // needs_consent, config_error or transient
	RetryAfter time.Duration // from Retry-After, or the backoff still to wait
	Remedy     string        // what an operator should do

	// Suberror, TraceID and CorrelationID are copied from the answer for
	// support cases with Microsoft (they contain no secrets).
	Suberror      string
	TraceID       string
	CorrelationID string

	cause error // network/timeout errors only
}

func (e *IdentityError) Error() string {
	var b strings.Builder
	b.WriteString("identity platform: ")
	parts := make([]string, 0, 4)
	if e.Err != "" {
		parts = append(parts, e.Err)
	}
	for _, c := range e.Codes {
		parts = append(parts, "AADSTS"+strconv.Itoa(c))
	}
	if e.Status != 0 && (e.Err == "" || e.Status >= 500 || e.Status == http.StatusTooManyRequests) {
		parts = append(parts, "HTTP "+strconv.Itoa(e.Status))
	}
	if e.cause != nil {
		parts = append(parts, "request failed: "+e.cause.Error())
	}
	if len(parts) == 0 {
		parts = append(parts, "unknown failure")
	}
	b.WriteString(strings.Join(parts, " "))
	b.WriteString(" (")
	b.WriteString(string(e.Class))
	b.WriteString(")")
	if e.Remedy != "" {
		b.WriteString(": ")
		b.WriteString(e.Remedy)
	}
	return b.String()
}

// Unwrap returns the network or timeout error behind a transient failure.
func (e *IdentityError) Unwrap() error { return e.cause }

// ForAccount rewrites the remedy for the account it concerns, so the
// command it names carries the real alias (authtool app for app-only
// accounts). It returns e.
func (e *IdentityError) ForAccount(alias string, appOnly bool) *IdentityError {
	e.Remedy = remedy(e, alias, appOnly)
	return e
}

// Temporary reports whether retrying later may succeed.
func (e *IdentityError) Temporary() bool { return e.Class == StateTransient }

// codeClass is the table of docs/office365.md §2, keyed by AADSTS code.
var codeClass = map[int]State{
	// invalid_grant: refresh token expired/revoked, sign-in frequency
	70000: StateNeedsConsent, 70008: StateNeedsConsent, 700082: StateNeedsConsent,
	700084: StateNeedsConsent, 70043: StateNeedsConsent, 50173: StateNeedsConsent,
	54005: StateNeedsConsent,
	// interaction_required: MFA or conditional access wants a person
	50076: StateNeedsConsent, 50079: StateNeedsConsent, 53003: StateNeedsConsent,
	530035: StateNeedsConsent,
	// consent missing
	65001: StateNeedsConsent,
	// invalid_client: secret wrong or expired
	7000215: StateConfigError, 7000222: StateConfigError,
	// unauthorized_client: app or tenant not found, wrong tenant for the flow
	700016: StateConfigError, 90002: StateConfigError, 9001023: StateConfigError,
	// invalid_scope, and a resource the tenant does not have (Exchange
	// Online not provisioned, a scope naming another resource): asking
	// again gets the same answer until the account's configuration or the
	// tenant changes
	70011: StateConfigError, 500011: StateConfigError,
	// transient
	50033: StateTransient, 90006: StateTransient, 90024: StateTransient,
	90033: StateTransient, 90055: StateTransient,
}

// classify decides the class from the error field, codes and status. Known
// codes win; then temporarily_unavailable, 5xx and 429 are transient; then
// the OAuth error field alone decides for answers that always need a
// person (invalid_grant, interaction_required, consent_required) or an
// operator (invalid_client, unauthorized_client, invalid_scope: RFC 6749
// §5.2 answers a scope that is invalid, unknown or malformed with it, and
// no retry changes that); anything else is transient.
func classify(errName string, codes []int, status int) State {
	for _, c := range codes {
		if cls, ok := codeClass[c]; ok {
			return cls
		}
	}
	if errName == "temporarily_unavailable" || status >= 500 || status == http.StatusTooManyRequests {
		return StateTransient
	}
	switch errName {
	case "invalid_grant", "interaction_required", "consent_required":
		return StateNeedsConsent
	case "invalid_client", "unauthorized_client", "invalid_scope":
		return StateConfigError
	}
	return StateTransient
}

type errorBody struct {
	Error         string `json:"error"`
	ErrorCodes    []int  `json:"error_codes"`
	Suberror      string `json:"suberror"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
}

// ClassifyResponse classifies an error answer of the token endpoint from
// its HTTP status, headers and body.
func ClassifyResponse(status int, header http.Header, body []byte) *IdentityError {
	var eb errorBody
	_ = json.Unmarshal(body, &eb) // a non-JSON body (proxy page, 502) leaves it empty
	return newIdentityError(eb, status, header)
}

func newIdentityError(eb errorBody, status int, header http.Header) *IdentityError {
	e := &IdentityError{
		Err:           sanitizeField(eb.Error),
		Codes:         slices.Clone(eb.ErrorCodes),
		Status:        status,
		Suberror:      sanitizeField(eb.Suberror),
		TraceID:       sanitizeField(eb.TraceID),
		CorrelationID: sanitizeField(eb.CorrelationID),
	}
	e.Class = classify(e.Err, e.Codes, status)
	if header != nil {
		e.RetryAfter = parseRetryAfter(header.Get("Retry-After"), time.Now())
	}
	e.Remedy = remedy(e, "", false)
	return e
}

// sanitizeField keeps short token-like fields only, so an odd answer cannot
// smuggle arbitrary text into logs and stored errors.
func sanitizeField(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return "unrecognised"
		}
	}
	return s
}

// Classify turns any error of a token request into an IdentityError:
// *oauth2.RetrieveError by its answer, network errors and timeouts as
// transient, anything unknown as transient. nil stays nil.
func Classify(err error) *IdentityError {
	if err == nil {
		return nil
	}
	var ie *IdentityError
	if errors.As(err, &ie) {
		return ie
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		var eb errorBody
		_ = json.Unmarshal(re.Body, &eb)
		if eb.Error == "" {
			eb.Error = re.ErrorCode // form-encoded answers
		}
		status := 0
		var header http.Header
		if re.Response != nil {
			status, header = re.Response.StatusCode, re.Response.Header
		}
		return newIdentityError(eb, status, header)
	}
	e := &IdentityError{Class: StateTransient, cause: err}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		e.cause = fmt.Errorf("timeout: %w", err)
	}
	e.Remedy = remedy(e, "", false)
	return e
}

// MaxRetryAfter caps the wait a Retry-After may ask for, and the wait the
// token service hands on with its answer (tokensvc).
const MaxRetryAfter = time.Hour

// parseRetryAfter reads Retry-After (RFC 9110 §10.2.3): delay-seconds
// (1*DIGIT) or an HTTP-date, as a wait within [0, MaxRetryAfter].
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if !strings.ContainsFunc(v, func(r rune) bool { return r < '0' || r > '9' }) {
		// delay-seconds is any number of digits: compare with the cap
		// before converting, since n*time.Second overflows int64 from
		// 9223372037 seconds on (a negative wait, or a small positive one
		// after wrapping), and Atoi refuses numbers past int64 that are
		// still a valid, very long delay.
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), MaxRetryAfter)
	}
	return 0
}

// remedy is the operator instruction for e. alias "" gives a generic text.
func remedy(e *IdentityError, alias string, appOnly bool) string {
	acct := alias
	if acct == "" {
		acct = "<account>"
	}
	login := "authtool login --account " + acct
	if appOnly {
		login = "authtool app --account " + acct
	}
	has := func(codes ...int) bool {
		for _, c := range codes {
			if slices.Contains(e.Codes, c) {
				return true
			}
		}
		return false
	}
	switch e.Class {
	case StateNeedsConsent:
		switch {
		case e.Err == "no_refresh_token":
			return "no refresh token is stored (was offline_access consented?): run: " + login
		case e.Err == ErrSMTPRefused:
			if appOnly {
				return "Office 365 refused (535) a freshly issued token for SMTP: check that the app has SMTP.SendAsApp with admin consent and a mailbox permission for the mailbox (Add-MailboxPermission), then run: " + login
			}
			return "Office 365 refused (535) a freshly issued token for SMTP: check that the signed-in user is the account's mailbox and the app has the SMTP.Send delegated permission, then run: " + login
		case has(65001) || e.Err == "consent_required":
			if appOnly {
				return "admin consent for SMTP.SendAsApp is missing: grant it in Entra (API permissions), then run: " + login
			}
			return "consent for SMTP.Send is missing: grant consent (an admin may have to), then run: " + login
		case has(50076, 50079, 53003, 530035) || e.Err == "interaction_required":
			return "MFA or conditional access requires a person to sign in: run: " + login
		default:
			return "the refresh token expired or was revoked (password change, sign-in frequency, revocation): run: " + login
		}
	case StateConfigError:
		// A new secret is stored by authtool app for an app-only account,
		// and by authtool login --client-secret-file for a delegated one whose
		// app registration is a confidential client (authtool app would
		// make it app-only).
		storeSecret := "authtool app --account " + acct
		if !appOnly && alias != "" {
			storeSecret = login + " --client-secret-file FILE"
		}
		switch {
		case e.Err == "no_client_secret":
			return "no client secret is stored for this app-only account: run: authtool app --account " + acct
		case has(7000215):
			return "client secret is wrong or expired: create a new secret in Entra and run: " + storeSecret
		case has(7000222):
			return "client secret has expired: create a new secret in Entra and run: " + storeSecret
		case has(7000218):
			return "the app registration is a confidential client: for sign-in without a secret turn on \"Allow public client flows\" under Authentication in Entra, or give the client secret"
		case has(700016):
			return "application not found in tenant: check --client-id and --tenant"
		case has(90002):
			return "tenant not found: check --tenant (tenant ID or verified domain)"
		case has(70011) || e.Err == "invalid_scope":
			return "the identity platform refused the account's scopes: check them (SMTP.Send and offline_access for a mailbox, https://outlook.office365.com/.default for an app), then run: " + login
		case has(500011):
			return "the tenant has no such resource (is Exchange Online provisioned for it, and is --tenant the mailbox's tenant?), then run: " + login
		case has(9001023):
			return "this flow is not supported on the tenant used (common/consumers): set --tenant to the tenant ID or domain"
		case e.Err == "invalid_client":
			return "the identity platform rejected the client credentials: check --client-id and the client secret, then run: " + login
		default:
			return "the app registration does not allow this request: check --client-id, --tenant and the app's permissions, then run: " + login
		}
	default:
		if e.RetryAfter > 0 {
			return "temporary failure: retrying after " + e.RetryAfter.Round(time.Second).String()
		}
		return "temporary failure: retrying with backoff"
	}
}
