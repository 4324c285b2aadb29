package authcmd_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"relay365/internal/cli"
	"relay365/internal/fakeo365"
)

// TestLoginRefusedCodeIsNotCalledARefreshToken: the identity platform
// refuses the authorization code at the exchange (here: it expired while
// the redirect was on its way; the same invalid_grant comes for a code
// already redeemed or a redirect URI or PKCE verifier that does not match).
// The message must be about the sign-in that was just made, not about a
// refresh token "expired or revoked by a password change", which the
// person running authtool login has no refresh token to fix.
func TestLoginRefusedCodeIsNotCalledARefreshToken(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	slowBrowser := func(line string) {
		u := strings.TrimSpace(line)
		if !strings.HasPrefix(line, "  http") || !strings.Contains(u, "/authorize?") {
			return
		}
		resp, err := noFollow.Get(u) // sign in: the code comes back in Location
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		w.clock.advance(11 * time.Minute) // the code lives 10 minutes
		if resp, err = http.Get(resp.Header.Get("Location")); err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
	}
	r := w.run(person{onLine: slowBrowser}, w.login("alerts", mailbox)...)
	if r.code != cli.ExitFail {
		t.Fatalf("exit %d, want %d", r.code, cli.ExitFail)
	}
	for _, want := range []string{"authorization code", "AADSTS70008", "run the command again", "nothing was stored"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if strings.Contains(r.stderr, "refresh token") {
		t.Error("stderr blames a refresh token for a refused authorization code")
	}
	w.mustBeEmpty("alerts")
}
