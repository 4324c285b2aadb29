package token

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// retryAfterCap is the longest wait an identity error may carry
// (parseRetryAfter's cap).
const retryAfterCap = time.Hour

// FuzzClassifyResponse: whatever the token endpoint (or a proxy in front
// of it) answers, the error gets one of the three classes, a Retry-After
// within [0, an hour], copies only token-like fields, and its message and
// remedy stay one line of printable text without the description. The
// same answer seen through x/oauth2's RetrieveError classifies the same.
func FuzzClassifyResponse(f *testing.F) {
	future := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	for _, s := range []struct {
		status int
		retry  string
		body   string
	}{
		{400, "", errBody("invalid_grant", 70008)},
		{400, "", errBody("interaction_required", 50076)},
		{401, "", errBody("invalid_client", 7000215)},
		{400, "", errBody("invalid_scope", 70011)},
		{400, "", errBody("invalid_request", 90033)},
		{400, "", errBody("invalid_grant", 50033)},
		{503, "12", errBody("temporarily_unavailable")},
		{429, "30", ""},
		{429, future, ""},
		{503, "Wed, 21 Oct 2015 07:28:00 GMT", "<html>502 Bad Gateway</html>"},
		{502, "", ""},
		{400, "", `{"error":"x y <script>","error_codes":[1]}`},
		{400, "", `{"error":"invalid_grant\r\nX: y","suberror":"bad_token","trace_id":"` + strings.Repeat("a", 100) + `"}`},
		{400, "", `{"error_codes":[-1,0,2147483648,9223372036854775807]}`},
		{400, "", `{"error":null,"error_codes":"70008"}`},
		{400, "-5", errBody("invalid_grant")},
		{429, "+5", ""},
		{429, "9223372036854775807", ""}, // overflowed to -1s
		{429, "18446744074", ""},         // overflowed to 290ms
		{429, "99999999999999999999999", ""},
		{429, " 3600 ", ""},
		{0, "", ""},
		{-1, "1e3", "{"},
		{999, "", `{"error":"unauthorized_client","error_codes":[9001023]}`},
	} {
		f.Add(s.status, s.retry, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, retry string, body []byte) {
		var header http.Header
		if retry != "" {
			header = http.Header{"Retry-After": {retry}}
		}
		e := ClassifyResponse(status, header, body)
		checkIdentityError(t, e)
		if e.Status != status {
			t.Fatalf("status %d, want %d", e.Status, status)
		}

		// The same answer as x/oauth2 hands it over (JSON answers: the
		// form-encoded fallback sets ErrorCode only when the body is not JSON).
		re := &oauth2.RetrieveError{Response: &http.Response{StatusCode: status, Header: header}, Body: body}
		e2 := Classify(fmt.Errorf("wrapped: %w", re))
		checkIdentityError(t, e2)
		if e2.Class != e.Class || e2.Err != e.Err || !slices.Equal(e2.Codes, e.Codes) {
			t.Fatalf("RetrieveError path: %v, direct: %v", e2, e)
		}

		// Every remedy, with an alias, stays one printable line too.
		for _, appOnly := range []bool{false, true} {
			e.ForAccount("alerts-1", appOnly)
			checkIdentityError(t, e)
		}
	})
}

func checkIdentityError(t *testing.T, e *IdentityError) {
	t.Helper()
	if e == nil {
		t.Fatal("nil IdentityError")
	}
	switch e.Class {
	case StateNeedsConsent, StateConfigError, StateTransient:
	default:
		t.Fatalf("class %q outside the closed set", e.Class)
	}
	if e.Temporary() != (e.Class == StateTransient) {
		t.Fatal("Temporary() disagrees with the class")
	}
	if e.RetryAfter < 0 || e.RetryAfter > retryAfterCap {
		t.Fatalf("RetryAfter %v outside [0, %v]", e.RetryAfter, retryAfterCap)
	}
	for name, v := range map[string]string{"error": e.Err, "suberror": e.Suberror, "trace_id": e.TraceID, "correlation_id": e.CorrelationID} {
		if v != sanitizeField(v) || len(v) > 64 {
			t.Fatalf("%s %q copied unsanitised", name, v)
		}
	}
	msg := e.Error()
	if e.Remedy == "" || !strings.Contains(msg, "("+string(e.Class)+")") {
		t.Fatalf("message %q lacks class or remedy", msg)
	}
	if strings.ContainsFunc(msg, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		t.Fatalf("message %q has a control character", msg)
	}
}

// FuzzParseRetryAfter: Retry-After (RFC 9110 §10.2.3) is delay-seconds or
// an HTTP-date; whatever the header holds, the wait is within [0, an
// hour], and a plain number of seconds gives that many seconds, capped.
func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for _, s := range []string{
		"", "0", "1", "30", "3600", "3601", "-1", "+5", " 12 ", "1.5", "0x10",
		"9223372036854775807", "9223372037", "18446744074", "99999999999999999999999",
		"Fri, 27 Nov 2026 10:01:30 GMT", "Fri, 27 Nov 2026 09:00:00 GMT",
		"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
		"Fri, 31 Dec 9999 23:59:59 GMT",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d := parseRetryAfter(v, now)
		if d < 0 || d > retryAfterCap {
			t.Fatalf("parseRetryAfter(%q) = %v, outside [0, %v]", v, d, retryAfterCap)
		}
		digits := strings.TrimSpace(v)
		if digits == "" || strings.ContainsFunc(digits, func(r rune) bool { return r < '0' || r > '9' }) {
			return
		}
		// delay-seconds: compare without converting (that is what overflows).
		digits = strings.TrimLeft(digits, "0")
		capDigits := fmt.Sprint(int64(retryAfterCap / time.Second))
		over := len(digits) > len(capDigits) || len(digits) == len(capDigits) && digits > capDigits
		switch {
		case over && d != retryAfterCap:
			t.Fatalf("parseRetryAfter(%q) = %v, want the cap %v", v, d, retryAfterCap)
		case !over && d != time.Duration(mustAtoi(digits))*time.Second:
			t.Fatalf("parseRetryAfter(%q) = %v, want %s seconds", v, d, digits)
		}
	})
}

func mustAtoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}
