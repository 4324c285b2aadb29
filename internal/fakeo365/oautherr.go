package fakeo365

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// oauthError is one Entra error answer: the OAuth error code, the AADSTS
// number and its text. The envelope (trace and correlation IDs, timestamp,
// error_uri) is added when it is written.
type oauthError struct {
	status   int
	code     string // OAuth "error"
	aadsts   int
	text     string
	suberror string
}

func newOAuthError(status int, code string, aadsts int, format string, args ...any) *oauthError {
	return &oauthError{status: status, code: code, aadsts: aadsts, text: fmt.Sprintf(format, args...)}
}

func (e *oauthError) withSuberror(sub string) *oauthError {
	e.suberror = sub
	return e
}

func (e *oauthError) Error() string {
	return fmt.Sprintf("%s AADSTS%d: %s", e.code, e.aadsts, e.text)
}

// Errors shared by several endpoints.

func errMissingParam(name string) *oauthError {
	return newOAuthError(http.StatusBadRequest, "invalid_request", 900144,
		"The request body must contain the following parameter: '%s'.", name)
}

func errInvalidGrant(aadsts int, format string, args ...any) *oauthError {
	return newOAuthError(http.StatusBadRequest, "invalid_grant", aadsts, format, args...)
}

func errTransient() *oauthError {
	return newOAuthError(http.StatusServiceUnavailable, "temporarily_unavailable", 90033,
		"A transient error has occurred. Please try again.")
}

func errConsentDeclined(code string) *oauthError {
	return newOAuthError(http.StatusBadRequest, code, 65004,
		"User declined to consent to access the app.").withSuberror("consent_required")
}

// errorBody is the JSON the token and devicecode endpoints answer on error.
type errorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
	ErrorURI         string `json:"error_uri"`
	Suberror         string `json:"suberror,omitempty"`
}

// envelope renders e the way Entra does, reusing the client's
// client-request-id header as correlation ID when there is one.
func (s *Server) envelope(r *http.Request, e *oauthError) errorBody {
	trace := newUUID()
	corr := r.Header.Get("client-request-id")
	if corr == "" {
		corr = newUUID()
	}
	ts := s.now().UTC().Format("2006-01-02 15:04:05Z")
	return errorBody{
		Error: e.code,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s",
			e.aadsts, e.text, trace, corr, ts),
		ErrorCodes:    []int{e.aadsts},
		Timestamp:     ts,
		TraceID:       trace,
		CorrelationID: corr,
		ErrorURI:      s.authority + "/error?code=" + strconv.Itoa(e.aadsts),
		Suberror:      e.suberror,
	}
}

func (s *Server) writeOAuthError(w http.ResponseWriter, r *http.Request, e *oauthError) {
	body := s.envelope(r, e)
	w.Header().Set("x-ms-request-id", body.TraceID)
	s.log.Debug().Str("path", r.URL.Path).Str("error", e.code).Int("aadsts", e.aadsts).Msg("identity error")
	writeJSON(w, e.status, body)
}

// redirectError sends the browser back to the client with the error in the
// query, as the authorize endpoint does once redirect_uri is trusted.
func (s *Server) redirectError(w http.ResponseWriter, r *http.Request, redirect *url.URL, state string, e *oauthError) {
	body := s.envelope(r, e)
	params := url.Values{
		"error":             {body.Error},
		"error_description": {body.ErrorDescription},
		"error_uri":         {body.ErrorURI},
	}
	if state != "" {
		params.Set("state", state)
	}
	s.log.Debug().Str("error", e.code).Int("aadsts", e.aadsts).Msg("authorize error")
	redirectWith(w, r, redirect, params)
}

// pageError answers an authorize request that cannot be redirected (no or
// bad redirect_uri), like the error page Entra shows in the browser.
func (s *Server) pageError(w http.ResponseWriter, r *http.Request, e *oauthError) {
	body := s.envelope(r, e)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(e.status)
	fmt.Fprintf(w, "Sign in failed: %s\n%s\n", body.Error, body.ErrorDescription)
}

func redirectWith(w http.ResponseWriter, r *http.Request, base *url.URL, params url.Values) {
	u := *base
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
