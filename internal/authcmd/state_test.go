package authcmd_test

import (
	"net/url"
	"strings"
	"testing"

	"relay365/internal/cli"
	"relay365/internal/fakeo365"
)

// TestLoginRedirectWithAnotherStateIsNamed: the browser flow ignores a
// redirect whose state is not this sign-in's (a stale tab, an earlier
// run's URL on the same --redirect-port, a forged request) and keeps
// waiting. When it then gives up, the message must say what happened and
// what to do, not only "context deadline exceeded".
func TestLoginRedirectWithAnotherStateIsNamed(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	r := w.run(person{follow: true, rewrite: func(u string) string {
		pu, err := url.Parse(u)
		if err != nil {
			t.Error(err)
			return u
		}
		q := pu.Query()
		q.Set("state", "state-of-an-earlier-sign-in")
		pu.RawQuery = q.Encode()
		return pu.String()
	}}, w.login("alerts", mailbox, "--timeout", "1s")...)
	if r.code != cli.ExitFail {
		t.Fatalf("exit %d, want %d", r.code, cli.ExitFail)
	}
	for _, want := range []string{"state", "another sign-in", "--timeout 1s", "nothing was stored"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if w.fake.TokenCalls(fakeo365.GrantAuthorizationCode) != 0 {
		t.Error("a code from a redirect with another state was redeemed")
	}
	w.mustBeEmpty("alerts")
}
