package token

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func errBody(errName string, codes ...int) string {
	cs := make([]string, len(codes))
	for i, c := range codes {
		cs[i] = fmt.Sprint(c)
	}
	desc := "AADSTS00000: description text that must never be used or shown. Trace ID: x"
	return fmt.Sprintf(`{"error":%q,"error_description":%q,"error_codes":[%s],"timestamp":"2026-11-27 10:00:00Z","trace_id":"tr-1","correlation_id":"co-1","error_uri":"https://login.microsoftonline.com/error?code=1"}`,
		errName, desc, strings.Join(cs, ","))
}

// TestClassifyTable covers every row of docs/office365.md §2.
func TestClassifyTable(t *testing.T) {
	type row struct {
		name   string
		status int
		header http.Header
		body   string
		want   State
	}
	var rows []row
	for _, c := range []int{70000, 70008, 700082, 700084, 70043, 50173, 54005} {
		rows = append(rows, row{fmt.Sprintf("invalid_grant %d", c), 400, nil, errBody("invalid_grant", c), StateNeedsConsent})
	}
	for _, c := range []int{50076, 50079, 53003, 530035} {
		rows = append(rows, row{fmt.Sprintf("interaction_required %d", c), 400, nil, errBody("interaction_required", c), StateNeedsConsent})
	}
	rows = append(rows,
		row{"invalid_grant 65001", 400, nil, errBody("invalid_grant", 65001), StateNeedsConsent},
		row{"consent_required 65001", 400, nil, errBody("consent_required", 65001), StateNeedsConsent},
		row{"invalid_client 7000215", 401, nil, errBody("invalid_client", 7000215), StateConfigError},
		row{"invalid_client 7000222", 401, nil, errBody("invalid_client", 7000222), StateConfigError},
		row{"unauthorized_client 700016", 400, nil, errBody("unauthorized_client", 700016), StateConfigError},
		row{"unauthorized_client 90002", 400, nil, errBody("unauthorized_client", 90002), StateConfigError},
		row{"unauthorized_client 9001023", 400, nil, errBody("unauthorized_client", 9001023), StateConfigError},
		row{"invalid_scope 70011", 400, nil, errBody("invalid_scope", 70011), StateConfigError},
		row{"invalid_scope unknown code", 400, nil, errBody("invalid_scope", 99999), StateConfigError},
		row{"invalid_resource 500011", 400, nil, errBody("invalid_resource", 500011), StateConfigError},
		row{"temporarily_unavailable", 503, nil, errBody("temporarily_unavailable"), StateTransient},
		row{"temporarily_unavailable 400", 400, nil, errBody("temporarily_unavailable"), StateTransient},
	)
	for _, c := range []int{50033, 90006, 90024, 90033, 90055} {
		rows = append(rows, row{fmt.Sprintf("transient code %d", c), 400, nil, errBody("invalid_request", c), StateTransient})
	}
	rows = append(rows,
		row{"HTTP 500 html", 500, nil, "<html>oops</html>", StateTransient},
		row{"HTTP 502 empty", 502, nil, "", StateTransient},
		row{"HTTP 503 json", 503, http.Header{"Retry-After": {"12"}}, errBody("server_error"), StateTransient},
		row{"HTTP 504", 504, nil, "", StateTransient},
		row{"HTTP 429", 429, http.Header{"Retry-After": {"30"}}, "", StateTransient},
		row{"unknown error", 400, nil, errBody("something_new", 12345), StateTransient},
		row{"400 without body", 400, nil, "", StateTransient},
		row{"invalid_request unknown code", 400, nil, errBody("invalid_request", 900144), StateTransient},
		// Field fallback for codes not in the table (documented choice).
		row{"invalid_grant unknown code", 400, nil, errBody("invalid_grant", 99999), StateNeedsConsent},
		row{"invalid_client unknown code", 401, nil, errBody("invalid_client", 7000218), StateConfigError},
		// A known transient code wins over the error field.
		row{"invalid_grant with 50033", 400, nil, errBody("invalid_grant", 50033), StateTransient},
	)
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			check := func(e *IdentityError) {
				t.Helper()
				if e.Class != r.want {
					t.Fatalf("class %s, want %s (%v)", e.Class, r.want, e)
				}
				if e.Status != r.status {
					t.Fatalf("status %d, want %d", e.Status, r.status)
				}
				msg := e.Error()
				if strings.Contains(msg, "description text") || strings.Contains(msg, "AADSTS00000") {
					t.Fatalf("message uses the description: %s", msg)
				}
				if !strings.Contains(msg, "("+string(r.want)+")") || e.Remedy == "" {
					t.Fatalf("message %q lacks class or remedy", msg)
				}
				if e.Temporary() != (r.want == StateTransient) {
					t.Fatal("Temporary() disagrees with class")
				}
			}
			check(ClassifyResponse(r.status, r.header, []byte(r.body)))
			// The same answer as x/oauth2 reports it.
			re := &oauth2.RetrieveError{Response: &http.Response{StatusCode: r.status, Header: r.header}, Body: []byte(r.body)}
			check(Classify(fmt.Errorf("wrapped: %w", re)))
		})
	}
}

func TestIdentityErrorMessage(t *testing.T) {
	e := ClassifyResponse(400, nil, []byte(errBody("invalid_grant", 50173)))
	if want := "identity platform: invalid_grant AADSTS50173 (needs_consent): "; !strings.HasPrefix(e.Error(), want) {
		t.Fatalf("Error() = %q, want prefix %q", e.Error(), want)
	}
	if e.TraceID != "tr-1" || e.CorrelationID != "co-1" || len(e.Codes) != 1 || e.Codes[0] != 50173 {
		t.Fatalf("fields: %+v", e)
	}
	e.Remedy = remedy(e, "alerts", false)
	if !strings.Contains(e.Error(), "run: authtool login --account alerts") {
		t.Fatalf("remedy: %s", e.Error())
	}
	sec := ClassifyResponse(401, nil, []byte(errBody("invalid_client", 7000215)))
	sec.Remedy = remedy(sec, "billing", true)
	if !strings.Contains(sec.Error(), "client secret is wrong or expired: create a new secret in Entra and run: authtool app --account billing") {
		t.Fatalf("7000215 remedy: %s", sec.Error())
	}
	nf := ClassifyResponse(400, nil, []byte(errBody("unauthorized_client", 700016)))
	if !strings.Contains(nf.Error(), "application not found in tenant: check --client-id and --tenant") {
		t.Fatalf("700016 remedy: %s", nf.Error())
	}
	ra := ClassifyResponse(429, http.Header{"Retry-After": {"30"}}, nil)
	if ra.RetryAfter != 30*time.Second || !strings.Contains(ra.Error(), "HTTP 429") {
		t.Fatalf("429: %v %v", ra.RetryAfter, ra)
	}
	date := ClassifyResponse(503, http.Header{"Retry-After": {time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)}}, nil)
	if date.RetryAfter < 80*time.Second || date.RetryAfter > 91*time.Second {
		t.Fatalf("Retry-After date: %v", date.RetryAfter)
	}
	// Odd field contents are not copied into messages.
	odd := ClassifyResponse(400, nil, []byte(`{"error":"x y <script>","error_codes":[1]}`))
	if strings.Contains(odd.Error(), "script") {
		t.Fatalf("unsanitised: %s", odd.Error())
	}
}

func TestClassifyNetworkErrors(t *testing.T) {
	if Classify(nil) != nil {
		t.Fatal("Classify(nil) != nil")
	}
	// Connection refused: a listener that is closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = http.Post("http://"+addr+"/token", "application/x-www-form-urlencoded", nil)
	e := Classify(err)
	if e.Class != StateTransient || e.Status != 0 || !strings.Contains(e.Error(), "request failed") {
		t.Fatalf("refused: %v", e)
	}
	var ne net.Error
	if !errors.As(e, &ne) {
		t.Fatal("Unwrap does not reach the net error")
	}
	// Timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	e = Classify(fmt.Errorf("post: %w", ctx.Err()))
	if e.Class != StateTransient || !strings.Contains(e.Error(), "timeout") || !errors.Is(e, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", e)
	}
	// Anything unknown.
	if e := Classify(errors.New("oauth2: server response missing access_token")); e.Class != StateTransient {
		t.Fatalf("unknown: %v", e)
	}
	// An IdentityError passes through unchanged.
	orig := &IdentityError{Err: "invalid_grant", Codes: []int{70008}, Class: StateNeedsConsent}
	if Classify(fmt.Errorf("x: %w", orig)) != orig {
		t.Fatal("IdentityError not passed through")
	}
}
