package authcmd_test

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/testutil"
)

// Connecting an account again, as the remedy of needs_consent says
// ("authtool login --account A"), keeps its settings; the flags given
// change only what they name.
func TestLoginAgainKeepsSettings(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	first := w.run(person{follow: true}, w.login("alerts", mailbox, "--per-minute", "12", "--per-day", "500", "--max-conns", "2",
		"--from-policy", "allow", "--send-as", "ops@contoso.com", "--max-message-size", "10MB")...)
	if first.code != cli.ExitOK {
		t.Fatalf("first login: exit %d", first.code)
	}
	want, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	same := func(t *testing.T, got account.Account) {
		t.Helper()
		if got.Mailbox != want.Mailbox || got.Tenant != want.Tenant || got.ClientID != want.ClientID || got.Authority != want.Authority ||
			got.SMTPAddr != want.SMTPAddr || got.CAFile != want.CAFile || got.FromPolicy != want.FromPolicy || !slices.Equal(got.SendAs, want.SendAs) ||
			got.PerDay != want.PerDay || got.MaxConns != want.MaxConns || got.MaxMessageBytes != want.MaxMessageBytes || !slices.Equal(got.Scopes, want.Scopes) {
			t.Fatalf("connected again, the account is\n%+v\nwant its settings kept:\n%+v", got, want)
		}
	}

	// The documented remedy: only the alias.
	r := w.run(person{follow: true}, "login", "--account", "alerts", "--no-browser")
	if r.code != cli.ExitOK || !strings.Contains(r.stderr, "its settings are kept") {
		t.Fatalf("login --account alerts: exit %d", r.code)
	}
	got, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	same(t, got)
	if got.PerMinute != 12 {
		t.Fatalf("per_minute %d, want 12 kept", got.PerMinute)
	}

	// All the flags of the first login again but one: that one changes.
	r = w.run(person{follow: true}, w.login("alerts", mailbox, "--per-minute", "20")...)
	if r.code != cli.ExitOK {
		t.Fatalf("login --per-minute 20: exit %d", r.code)
	}
	if got, err = w.accounts.Get(testCtx(t), "alerts"); err != nil {
		t.Fatal(err)
	}
	same(t, got)
	if got.PerMinute != 20 {
		t.Fatalf("per_minute %d, want 20 from the flag", got.PerMinute)
	}
	if got.FromPolicy != message.PolicyAllow {
		t.Fatalf("from_policy %q, want allow kept", got.FromPolicy)
	}
	if n := len(w.fake.Messages()); n != 3 {
		t.Fatalf("%d test mails, want one per login", n)
	}
}

// Without --mailbox, --tenant and --client-id only an existing account can
// be meant: for a new alias it is a usage error, found before anyone signs
// in; a bad value of a flag that is given is one before NATS is asked.
func TestLoginAgainNeedsAnAccount(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	r := w.run(person{follow: true}, "login", "--account", "alerts", "--no-browser", "--authority", w.fake.AuthorityURL())
	if r.code != cli.ExitUsage || !strings.Contains(r.stderr, "account alerts does not exist: --mailbox, --tenant and --client-id are required") {
		t.Fatalf("exit %d, want %d", r.code, cli.ExitUsage)
	}
	r = w.run(person{env: map[string]string{"RELAY_NATS_URL": "nats://127.0.0.1:1"}}, "login", "--account", "alerts", "--tenant", "contoso/../evil")
	if r.code != cli.ExitUsage || !strings.Contains(r.stderr, `tenant "contoso/../evil" is invalid`) {
		t.Fatalf("bad --tenant: exit %d, want %d", r.code, cli.ExitUsage)
	}
	if w.fake.TokenCalls(fakeo365.GrantAuthorizationCode) != 0 {
		t.Fatal("the sign-in went ahead")
	}
	w.mustBeEmpty("alerts")
}

// The proxy of an account connected again is the one sealed with its
// tokens, credentials included, not relay_accounts' credential-free form.
func TestLoginAgainKeepsSealedProxy(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	const password = "pr0xy-Pa55w0rd-9c1e"
	proxy := testutil.StartProxy(t)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("relay:"+password))
	if r := w.run(person{}, w.login("alerts", mailbox, "--flow", "device", "--proxy", "http://relay:"+password+"@"+proxy.Addr)...); r.code != cli.ExitOK {
		t.Fatalf("first login: exit %d", r.code)
	}
	n, _ := proxy.Requests("/oauth2/v2.0/token")
	r := w.run(person{}, "login", "--account", "alerts", "--flow", "device")
	if r.code != cli.ExitOK {
		t.Fatalf("login again: exit %d", r.code)
	}
	if m, auths := proxy.Requests("/oauth2/v2.0/token"); m <= n || auths[m-1] != auth {
		t.Fatalf("the sign-in again did not go through the sealed proxy with its credentials: %d token requests before, %d after", n, m)
	}
	if rec := w.record("alerts"); rec.ProxyURL != "http://relay:"+password+"@"+proxy.Addr {
		t.Fatal("the proxy credentials were not sealed again")
	}
	if strings.Contains(r.stdout+r.stderr, password) {
		t.Fatal("output shows the proxy password")
	}
}
