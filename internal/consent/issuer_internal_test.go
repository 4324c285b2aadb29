package consent

import (
	"errors"
	"testing"
)

func TestCheckIssuer(t *testing.T) {
	const guid1, guid2 = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0b9d9c3e-1111-2222-3333-444455556666"
	entra := func(tenant string) string {
		return "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/authorize"
	}
	for _, tc := range []struct {
		iss, authURL string
		ok           bool
	}{
		{"", entra(guid1), true}, // absent: nothing to check
		{"https://login.microsoftonline.com/" + guid1 + "/v2.0", entra(guid1), true},
		{"https://login.microsoftonline.com/" + guid2 + "/v2.0", entra(guid1), false},                    // another tenant than the one named by ID
		{"https://login.microsoftonline.com/" + guid2 + "/v2.0", entra("contoso.onmicrosoft.com"), true}, // a name: the issuer names its ID
		{"https://login.microsoftonline.com/" + guid2 + "/v2.0", entra("organizations"), true},
		{"https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0", entra("contoso.onmicrosoft.com"), true},
		{"https://evil.example/" + guid1 + "/v2.0", entra(guid1), false},
		{"http://login.microsoftonline.com/" + guid1 + "/v2.0", entra(guid1), false},
		{"https://login.microsoftonline.com/" + guid2 + "/v1.0", entra("organizations"), false},
		{"https://idp.example/realms/relay", "https://idp.example/realms/relay/protocol/openid-connect/auth", true}, // another server's layout: same host
		{"https://other.example/realms/relay", "https://idp.example/realms/relay/protocol/openid-connect/auth", false},
	} {
		err := checkIssuer(tc.iss, tc.authURL)
		var mix *IssuerMismatchError
		if (err == nil) != tc.ok || (err != nil && !errors.As(err, &mix)) {
			t.Errorf("checkIssuer(%q, %q) = %v, want ok=%v", tc.iss, tc.authURL, err, tc.ok)
		}
	}
}
