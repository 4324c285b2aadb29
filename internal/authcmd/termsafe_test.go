package authcmd_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/fakeo365"
)

// errorRedirect turns the printed sign-in URL into the redirect an
// authorization server sends back with an error (RFC 6749 §4.1.2.1),
// with this sign-in's state.
func errorRedirect(code, description string) func(string) string {
	return func(signIn string) string {
		u, err := url.Parse(signIn)
		if err != nil {
			return signIn
		}
		q := u.Query()
		return q.Get("redirect_uri") + "?" + url.Values{
			"state": {q.Get("state")}, "error": {code}, "error_description": {description},
		}.Encode()
	}
}

// The error and error_description of the redirect are the server's
// text; control sequences in them reach stderr escaped, never raw.
func TestAuthorizeErrorIsEscaped(t *testing.T) {
	desc := "AADSTS65004: User declined.\x1b]0;owned\x07\x1b[2J\x9b31m\u009b1m\u202eevil\r\nforged line"
	tests := []struct {
		name, code string
		want       []string
	}{
		{"in the description", "access_denied", []string{"sign-in refused: access_denied: AADSTS65004: User declined.", `\x1b]0;owned\a\x1b[2J`, `\r\nforged line`, "Grant admin consent"}},
		{"in the error code", "access_denied\x1b[8m", []string{`sign-in refused: access_denied\x1b[8m:`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, fakeo365.Config{})
			r := w.failsStoringNothing(t, person{follow: true, rewrite: errorRedirect(tt.code, desc)}, w.login("alerts", mailbox), tt.want)
			for _, bad := range []string{"\x1b", "\x07", "\x9b", "\u009b", "\u202e", "\r"} {
				if strings.Contains(r.stderr, bad) {
					t.Errorf("stderr holds %q raw", bad)
				}
			}
			if w.fake.TokenCalls(fakeo365.GrantAuthorizationCode) != 0 {
				t.Error("a code was redeemed after an error redirect")
			}
		})
	}
}

// The SMTP reply that refuses the test mail is the server's text too.
func TestTestMailRefusalIsEscaped(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	w.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Refused\x1b]0;owned\x07\x1b[2J\u202eevil"})
	r := w.failsStoringNothing(t, person{follow: true}, w.login("alerts", mailbox), []string{"550 5.7.1 Refused", `\x1b]0;owned\a\x1b[2J`})
	for _, bad := range []string{"\x1b", "\x07", "\u202e"} {
		if strings.Contains(r.stderr, bad) {
			t.Errorf("stderr holds %q raw", bad)
		}
	}
}
