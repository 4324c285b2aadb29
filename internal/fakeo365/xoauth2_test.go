package fakeo365

import (
	"strings"
	"testing"
)

func TestParseXOAUTH2(t *testing.T) {
	tests := []struct {
		in          string
		user, token string
		ok          bool
	}{
		{"user=a@contoso.com\x01auth=Bearer eyJ0.eXA-_~+/==\x01\x01", "a@contoso.com", "eyJ0.eXA-_~+/==", true},
		{"user=A@Contoso.com\x01auth=bearer tok\x01\x01", "A@Contoso.com", "tok", true},
		{"user=a@contoso.com\x01auth=Bearer tok\x01", "", "", false},               // one ^A at the end
		{"user=a@contoso.com\x01auth=Bearer tok", "", "", false},                   // none
		{"user=a@contoso.com\x01auth=Bearer tok\x01\x01\x01", "", "", false},       // three
		{"user=a@contoso.com\x01auth=Basic dG9r\x01\x01", "", "", false},           // wrong scheme
		{"user=a@contoso.com\x01auth=Bearer  tok\x01\x01", "", "", false},          // two spaces
		{"user=a@contoso.com\x01auth=Bearer \x01\x01", "", "", false},              // empty token
		{"user=a@contoso.com\x01auth=tok\x01\x01", "", "", false},                  // no scheme
		{"user=\x01auth=Bearer tok\x01\x01", "", "", false},                        // empty user
		{"user=alerts\x01auth=Bearer tok\x01\x01", "", "", false},                  // not a mailbox
		{"user=a b@contoso.com\x01auth=Bearer tok\x01\x01", "", "", false},         // space in user
		{"auth=Bearer tok\x01user=a@contoso.com\x01\x01", "", "", false},           // order
		{"user=a@contoso.com\x01auth=Bearer tok\x01host=x\x01\x01", "", "", false}, // extra pair
		{"user=a@contoso.com\x01auth=Bearer t=k\x01\x01", "", "", false},           // '=' inside the token
		{"", "", "", false},
		{"\x01\x01", "", "", false},
	}
	for _, tt := range tests {
		user, token, err := ParseXOAUTH2([]byte(tt.in))
		if (err == nil) != tt.ok || user != tt.user || token != tt.token {
			t.Errorf("ParseXOAUTH2(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.in, user, token, err, tt.user, tt.token, tt.ok)
		}
	}
}

func FuzzParseXOAUTH2(f *testing.F) {
	for _, seed := range []string{
		"user=a@contoso.com\x01auth=Bearer eyJ0eXAiOiJKV1QifQ.e30.sig\x01\x01",
		"user=alerts@contoso.com\x01auth=bearer abc==\x01\x01",
		"user=a@contoso.com\x01auth=Bearer tok\x01host=x\x01\x01",
		"user=a@b\x01auth=Bearer \x01\x01",
		"user=\x01auth=Bearer t\x01\x01",
		"auth=Bearer t\x01\x01",
		"\x01\x01",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		user, token, err := ParseXOAUTH2(b)
		if err != nil {
			if user != "" || token != "" {
				t.Fatalf("error %v with values %q, %q", err, user, token)
			}
			return
		}
		if !validMailbox(user) || !validB64Token(token) || strings.ContainsAny(user+token, "\x01 ") {
			t.Fatalf("accepted invalid fields %q, %q", user, token)
		}
		// An accepted response is exactly the canonical encoding of its
		// fields, up to the case of the scheme.
		canonical := "user=" + user + "\x01auth=Bearer " + token + "\x01\x01"
		if !strings.EqualFold(string(b), canonical) || string(b[len(b)-len(token)-2:len(b)-2]) != token {
			t.Fatalf("accepted %q, canonical form %q", b, canonical)
		}
		u2, t2, err := ParseXOAUTH2([]byte(canonical))
		if err != nil || u2 != user || t2 != token {
			t.Fatalf("canonical form %q did not round-trip: %q, %q, %v", canonical, u2, t2, err)
		}
	})
}
