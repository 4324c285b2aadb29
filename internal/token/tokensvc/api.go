package tokensvc

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"relay365/internal/account"
	"relay365/internal/token"
)

// Names of the service and its endpoints (docs/design.md §4).
const (
	ServiceName    = "relay-tokens"
	ServiceVersion = "1.0.0"

	SubjectGet     = "token.get"
	SubjectRefresh = "token.refresh"
	SubjectStatus  = "token.status"
	// SubjectSMTPRefused is a worker's report that the SMTP server
	// refused the token issued at Since after a forced refresh
	// (token.Source.MarkSMTPRefused); the reply is SMTPRefusedReply.
	SubjectSMTPRefused = "token.smtp_refused"
)

// SMTPRefusedReply answers token.smtp_refused: Marked is false when the
// record was left alone (a newer token, already blocked, a refresh under
// way elsewhere).
type SMTPRefusedReply struct {
	Account string `json:"account"`
	Marked  bool   `json:"marked"`
}

// Request is the body of token.get, token.refresh and token.smtp_refused.
type Request struct {
	Account string `json:"account"`
	// Since (token.refresh, token.smtp_refused) is TokenReply.Issued of
	// the token that was refused: a token refreshed after it is returned
	// without another refresh. Absent: refresh unless one finished after
	// the request came. token.smtp_refused requires it.
	Since time.Time `json:"since,omitzero"`
	// Accepted (token.smtp_refused only): the SMTP server took a token
	// again after the refusal reported for Since; the alarm ends.
	Accepted bool `json:"accepted,omitempty"`
}

// TokenReply answers token.get and token.refresh. It carries the access
// token: only token clients (the workers) may subscribe to the replies —
// see the README's NATS permissions note.
//
// SMTPAddr, CAFile and ClientID are the binding sealed with the token
// (token.Binding): a worker opens a session only when its account record
// says the same. A reply of an earlier version has none of them and
// decodes to an unbound token.
type TokenReply struct {
	Account     string    `json:"account"`
	Mailbox     string    `json:"mailbox"`
	AccessToken string    `json:"access_token"`
	Expiry      time.Time `json:"expiry"`
	Issued      time.Time `json:"issued"`
	SMTPAddr    string    `json:"smtp_addr,omitempty"`
	CAFile      string    `json:"ca_file,omitempty"`
	ClientID    string    `json:"client_id,omitempty"`
}

// replyOf is the reply carrying tok.
func replyOf(alias string, tok token.AccessToken) TokenReply {
	return TokenReply{
		Account: alias, Mailbox: tok.Mailbox, AccessToken: tok.Token, Expiry: tok.Expiry, Issued: tok.Issued,
		SMTPAddr: tok.Binding.SMTPAddr, CAFile: tok.Binding.CAFile, ClientID: tok.Binding.ClientID,
	}
}

// accessToken is the token a reply carries, with its binding.
func (r TokenReply) accessToken() token.AccessToken {
	return token.AccessToken{
		Token: r.AccessToken, Expiry: r.Expiry, Mailbox: r.Mailbox, Issued: r.Issued,
		Binding: token.Binding{SMTPAddr: r.SMTPAddr, CAFile: r.CAFile, ClientID: r.ClientID},
	}
}

// StatusRequest is the body of token.status: {} for every account, or one
// account by alias.
type StatusRequest struct {
	Account string `json:"account,omitempty"`
}

// StatusReply answers token.status. It holds no secrets.
type StatusReply struct {
	Instance string          `json:"instance"`
	Accounts []AccountStatus `json:"accounts"`
}

// Error codes, sent as micro's Nats-Service-Error-Code header; the
// description header is the error text (no secrets) and the body an
// ErrorBody.
const (
	CodeBadRequest  = "400" // the request does not parse or names no valid alias
	CodeNotFound    = "404" // account not registered, or no tokens stored for it
	CodeIdentity    = "424" // the identity platform refused, or the recorded state does
	CodeUnavailable = "503" // the service is stopping, its store is unreachable, or another replica's refresh is still running: try again
)

// Kinds of ErrorBody.
const (
	KindBadRequest      = "bad_request"
	KindAccountNotFound = "account_not_found"
	KindTokensNotFound  = "tokens_not_found"
	KindIdentity        = "identity"
	KindUnavailable     = "unavailable"
)

// ErrorBody is the data of an error reply: enough for the client to
// rebuild the typed error (a *token.IdentityError for KindIdentity).
type ErrorBody struct {
	Kind          string `json:"kind"`
	Class         string `json:"class,omitempty"` // needs_consent, config_error, transient
	OAuthError    string `json:"error,omitempty"`
	ErrorCodes    []int  `json:"error_codes,omitempty"`
	HTTPStatus    int    `json:"http_status,omitempty"`
	RetryAfterMS  int64  `json:"retry_after_ms,omitempty"`
	Remedy        string `json:"remedy,omitempty"`
	Suberror      string `json:"suberror,omitempty"`
	TraceID       string `json:"trace_id,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
}

// errorReply classifies err, once, into a reply code and body.
func errorReply(err error) (code string, body ErrorBody) {
	var ie *token.IdentityError
	switch {
	case errors.As(err, &ie):
		return CodeIdentity, ErrorBody{
			Kind: KindIdentity, Class: string(ie.Class), OAuthError: ie.Err, ErrorCodes: ie.Codes,
			HTTPStatus: ie.Status, RetryAfterMS: ie.RetryAfter.Milliseconds(), Remedy: ie.Remedy,
			Suberror: ie.Suberror, TraceID: ie.TraceID, CorrelationID: ie.CorrelationID,
		}
	case errors.Is(err, account.ErrNotFound):
		return CodeNotFound, ErrorBody{Kind: KindAccountNotFound}
	case errors.Is(err, token.ErrNotFound):
		return CodeNotFound, ErrorBody{Kind: KindTokensNotFound}
	case errors.Is(err, errBadRequest):
		return CodeBadRequest, ErrorBody{Kind: KindBadRequest}
	default:
		return CodeUnavailable, ErrorBody{Kind: KindUnavailable}
	}
}

var errBadRequest = errors.New("bad request")

// ServiceError is an error reply that has no richer type: bad requests and
// temporary unavailability. Callers treat it as temporary unless Code is
// CodeBadRequest.
type ServiceError struct {
	Code        string
	Description string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("token service: %s (%s)", e.Description, e.Code)
}

// decodeError rebuilds the typed error of an error reply.
func decodeError(code, description string, data []byte) error {
	var b ErrorBody
	_ = json.Unmarshal(data, &b) // an empty or foreign body falls through to ServiceError
	switch {
	case b.Kind == KindIdentity:
		class := token.State(b.Class)
		switch class {
		case token.StateNeedsConsent, token.StateConfigError, token.StateTransient:
		default:
			class = token.StateTransient // unknown counts as temporary
		}
		return &token.IdentityError{
			Err: b.OAuthError, Codes: b.ErrorCodes, Status: b.HTTPStatus, Class: class,
			RetryAfter: retryAfter(b.RetryAfterMS), Remedy: b.Remedy,
			Suberror: b.Suberror, TraceID: b.TraceID, CorrelationID: b.CorrelationID,
		}
	case b.Kind == KindAccountNotFound:
		return &sentinelError{description, account.ErrNotFound}
	case b.Kind == KindTokensNotFound:
		return &sentinelError{description, token.ErrNotFound}
	}
	return &ServiceError{Code: code, Description: description}
}

// sentinelError keeps the service's description and matches the sentinel
// with errors.Is.
type sentinelError struct {
	description string
	sentinel    error
}

func (e *sentinelError) Error() string { return "token service: " + e.description }
func (e *sentinelError) Unwrap() error { return e.sentinel }

// retryAfter is the wait an answer carries, held within [0,
// token.MaxRetryAfter] before it is converted: a value out of range from
// another version, or a damaged answer, would otherwise overflow into a
// negative or a tiny wait, as an unchecked Retry-After once did.
func retryAfter(ms int64) time.Duration {
	return time.Duration(min(max(ms, 0), token.MaxRetryAfter.Milliseconds())) * time.Millisecond
}
