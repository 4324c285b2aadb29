package authcmd_test

import (
	"encoding/json"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/fakeo365"
	"relay365/internal/token"
)

func TestLoginBrowser(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	r := w.run(person{follow: true}, w.login("alerts", mailbox, "--per-minute", "12", "--max-message-size", "10MB", "--test-to", "ops@contoso.com")...)
	if r.code != cli.ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	u, err := url.Parse(r.signInURL)
	if err != nil || u.Query().Get("code_challenge_method") != "S256" || u.Query().Get("code_challenge") == "" ||
		u.Query().Get("login_hint") != mailbox || !strings.HasPrefix(u.Query().Get("redirect_uri"), "http://127.0.0.1:") {
		t.Fatalf("printed sign-in URL %q lacks PKCE S256, login_hint or the loopback redirect", r.signInURL)
	}
	// The fake checked the PKCE verifier when the code was redeemed.
	if n := w.fake.TokenCalls(fakeo365.GrantAuthorizationCode); n != 1 {
		t.Fatalf("authorization_code redemptions = %d, want 1", n)
	}
	if !strings.Contains(r.stderr, "left (Ctrl-C cancels") {
		t.Fatal("no countdown on stderr while waiting for the sign-in")
	}
	msgs := w.fake.Messages()
	if len(msgs) != 1 || msgs[0].Mailbox != mailbox || msgs[0].To[0] != "ops@contoso.com" || !strings.Contains(msgs[0].Subject, "alerts is connected") {
		t.Fatalf("want the test mail captured, got %+v", msgs)
	}
	if !strings.HasPrefix(r.stdout, "connected: account alerts sends as "+mailbox) || !strings.Contains(r.stdout, "messages up to 10MB") {
		t.Fatalf("stdout %q", r.stdout)
	}
	a, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if a.Mailbox != mailbox || a.SMTPAddr != w.fake.SMTPAddr() || a.CAFile != w.fake.CAFile() || a.PerMinute != 12 || a.MaxMessageBytes != 10<<20 || a.AppOnly {
		t.Fatalf("stored account %+v", a)
	}
	rec := w.record("alerts")
	if rec.State != token.StateHealthy || rec.RefreshToken == "" || rec.AccessToken == "" {
		t.Fatalf("stored tokens %v", rec)
	}
	noSecrets(t, []token.Record{rec}, r.stdout, r.stderr)
}

func TestLoginDevice(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: 3})
	r := w.run(person{}, w.login("alerts", mailbox, "--flow", "device", "--json")...)
	if r.code != cli.ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	if !strings.Contains(r.stderr, "To sign in, use a web browser to open the page "+w.fake.AuthorityURL()+"/devicelogin and enter the code ") {
		t.Fatal("the verification URL and user code are not printed as Microsoft words them")
	}
	if !strings.Contains(r.stderr, "Waiting for the sign-in with code ") {
		t.Fatal("no countdown while polling")
	}
	if n := w.fake.TokenCalls(fakeo365.GrantDeviceCode); n != 4 {
		t.Fatalf("device polls = %d, want 3 pending + 1 approved", n)
	}
	var res struct {
		Account string `json:"account"`
		Flow    string `json:"flow"`
		TestTo  string `json:"test_to"`
		AppOnly bool   `json:"app_only"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if res.Account != "alerts" || res.Flow != "device" || res.TestTo != mailbox || res.AppOnly {
		t.Fatalf("--json result %+v", res)
	}
	if len(w.fake.Messages()) != 1 {
		t.Fatal("test mail not captured")
	}
	if a, tk := w.stored("alerts"); !a || !tk {
		t.Fatalf("stored account %t tokens %t", a, tk)
	}
}

// Every failure class prints its cause and remedy, exits 1 and stores
// nothing.
func TestLoginFailuresStoreNothing(t *testing.T) {
	tests := []struct {
		name  string
		setup func(w *world) (person, []string)
		want  []string // all in stderr
	}{
		{"signed in as another mailbox (browser)", func(w *world) (person, []string) {
			// The person signs in with another account than --mailbox:
			// the ID token says so before any test mail.
			return person{follow: true, rewrite: func(u string) string {
				return strings.Replace(u, url.QueryEscape(mailbox), url.QueryEscape("someone@contoso.com"), 1)
			}}, w.login("alerts", mailbox)
		}, []string{"signed in as someone@contoso.com, but --mailbox is " + mailbox}},
		{"signed in as another mailbox (device)", func(w *world) (person, []string) {
			w.fake.SignInAs("someone@contoso.com")
			return person{}, w.login("alerts", mailbox, "--flow", "device")
		}, []string{"signed in as someone@contoso.com, but --mailbox is " + mailbox}},
		{"535 5.7.139 SMTP AUTH disabled", func(w *world) (person, []string) {
			w.fake.DisableSMTPAuth(tenant, true)
			return person{follow: true}, w.login("alerts", mailbox)
		}, []string{"535 5.7.139", "Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false"}},
		{"consent denied in the browser", func(w *world) (person, []string) {
			w.fake.DenyConsent(true)
			return person{follow: true}, w.login("alerts", mailbox)
		}, []string{"access_denied", "AADSTS65004", "Grant admin consent"}},
		{"device sign-in declined", func(w *world) (person, []string) {
			w.fake.DenyConsent(true)
			return person{}, w.login("alerts", mailbox, "--flow", "device")
		}, []string{"authorization_declined", "declined", "Grant admin consent"}},
		{"device code expired", func(w *world) (person, []string) {
			// The person walks away: by the next poll the code is 16 minutes old.
			return person{onLine: func(line string) {
				if strings.Contains(line, "enter the code") {
					w.clock.advance(16 * time.Minute)
				}
			}}, w.login("alerts", mailbox, "--flow", "device")
		}, []string{"expired_token", "enter the new code sooner"}},
		{"app-only bad client secret", func(w *world) (person, []string) {
			w.fake.RegisterApp(clientID, "the-right-secret")
			return person{env: map[string]string{"APP_SECRET": "a-wrong-secret"}},
				append(w.target("app", "alerts", mailbox), "--client-secret-env", "APP_SECRET")
		}, []string{"AADSTS7000215", "create a new secret in Entra and run: authtool app --account alerts"}},
		{"app-only app not in tenant", func(w *world) (person, []string) {
			return person{env: map[string]string{"APP_SECRET": "whatever"}},
				append(w.target("app", "alerts", mailbox), "--client-secret-env", "APP_SECRET")
		}, []string{"AADSTS700016", "application not found in tenant: check --client-id and --tenant"}},
		{"public flows off for the app", func(w *world) (person, []string) {
			w.fake.RegisterApp(clientID, "app-has-a-secret")
			return person{}, w.login("alerts", mailbox, "--flow", "device")
		}, []string{"AADSTS7000218", "Allow public client flows"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, fakeo365.Config{DeviceApproveAfter: 2})
			p, args := tt.setup(w)
			r := w.failsStoringNothing(t, p, args, tt.want)
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing on failure", r.stdout)
			}
			if n := len(w.fake.Messages()); n != 0 {
				t.Errorf("%d messages accepted, want none", n)
			}
		})
	}
}

func TestLoginInterruptedStoresNothing(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	r := w.run(person{cancelOnURL: true}, w.login("alerts", mailbox)...)
	if r.code != cli.ExitInterrupted {
		t.Fatalf("exit %d, want %d", r.code, cli.ExitInterrupted)
	}
	if !strings.Contains(r.stderr, "interrupted") || !strings.Contains(r.stderr, "nothing was stored") {
		t.Fatal("the interruption is not reported")
	}
	if w.fake.TokenCalls(fakeo365.GrantAuthorizationCode) != 0 {
		t.Fatal("a code was redeemed after the interruption")
	}
	w.mustBeEmpty("alerts")
}

func TestLoginReplacesOnlyAfterSuccess(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	if r := w.run(person{follow: true}, w.login("alerts", mailbox)...); r.code != cli.ExitOK {
		t.Fatalf("first login: exit %d", r.code)
	}
	before := w.record("alerts")
	// A second login whose test mail fails leaves the first one intact.
	w.fake.DisableSMTPAuth(tenant, true)
	r := w.run(person{follow: true}, w.login("alerts", mailbox, "--per-minute", "5")...)
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "it is replaced only if the new test mail is accepted") {
		t.Fatalf("exit %d", r.code)
	}
	a, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil || a.PerMinute != account.DefaultPerMinute {
		t.Fatalf("account changed by a failed login: %+v %v", a, err)
	}
	if after := w.record("alerts"); after.RefreshToken != before.RefreshToken {
		t.Fatal("tokens replaced by a failed login")
	}
}

func TestLoginOpensBrowser(t *testing.T) {
	t.Run("opener works", func(t *testing.T) {
		w := newWorld(t, fakeo365.Config{})
		args := w.target("login", "alerts", mailbox) // no --no-browser
		var opened string
		r := w.run(person{openBrowser: func(u string) error {
			opened = u
			go browse(testCtx(t), u) // the browser signs in
			return nil
		}}, args...)
		if r.code != cli.ExitOK || opened == "" || opened != r.signInURL {
			t.Fatalf("exit %d; opened %q, printed %q", r.code, opened, r.signInURL)
		}
	})
	t.Run("opener fails: the printed URL still works", func(t *testing.T) {
		w := newWorld(t, fakeo365.Config{})
		args := w.target("login", "alerts", mailbox)
		r := w.run(person{follow: true, openBrowser: func(string) error { return errors.New("no browser here") }}, args...)
		if r.code != cli.ExitOK || !strings.Contains(r.stderr, "Could not open a browser (no browser here): open the URL above yourself") {
			t.Fatalf("exit %d", r.code)
		}
	})
}

func TestUsageErrors(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	noKey := filepath.Join(t.TempDir(), "missing.key")
	tests := []struct {
		name string
		p    person
		args []string
		code int
		want string
	}{
		{"no account", person{}, []string{"login", "--mailbox", mailbox, "--tenant", tenant, "--client-id", clientID}, cli.ExitUsage, "alias is empty"},
		{"bad flow", person{}, w.login("alerts", mailbox, "--flow", "carrier-pigeon"), cli.ExitUsage, `--flow "carrier-pigeon"`},
		{"bad mailbox", person{}, w.login("alerts", "not-an-address"), cli.ExitUsage, "mailbox"},
		// Found after the sign-in, these threw the person's consent away.
		{"two test addresses", person{follow: true}, w.login("alerts", mailbox, "--test-to", "ops@contoso.com, it@contoso.com"), cli.ExitUsage, `--test-to "ops@contoso.com, it@contoso.com": want one deliverable e-mail address`},
		{"test address with a space", person{follow: true}, w.login("alerts", mailbox, "--test-to", `"o ps"@contoso.com`), cli.ExitUsage, "--test-to"},
		{"redirect port with the device flow", person{}, w.login("alerts", mailbox, "--flow", "device", "--redirect-port", "8400"), cli.ExitUsage, "--redirect-port is for --flow browser"},
		{"secret as a flag value", person{}, append(w.target("app", "alerts", mailbox), "--client-secret", "hunter2"), cli.ExitUsage, "flag provided but not defined"},
		{"app without secret", person{}, w.target("app", "alerts", mailbox), cli.ExitUsage, "client secret of the app registration is required"},
		{"app with delegated scope", person{env: map[string]string{"S": "x"}}, append(w.target("app", "alerts", mailbox), "--client-secret-env", "S", "--scopes", account.ScopeSMTPSend), cli.ExitUsage, ".default"},
		{"missing key file", person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": noKey}}, w.login("alerts", mailbox), cli.ExitUsage, "relay keygen"},
		{"import without token", person{}, w.target("import", "alerts", mailbox), cli.ExitUsage, "refresh token to import is required"},
		{"rotate without new key", person{}, []string{"rotate-key"}, cli.ExitUsage, "--new-key-file is required"},
		{"NATS user without password", person{}, append(w.login("alerts", mailbox), "--nats-user", "relay-admin"), cli.ExitUsage, "RELAY_NATS_PASSWORD"},
		{"list with a missing NATS CA", person{}, []string{"list", "--nats-tls-ca", noKey}, cli.ExitUsage, "--nats-tls-ca"},
		{"unknown command", person{}, []string{"frobnicate"}, cli.ExitUsage, `unknown command "frobnicate"`},
		// The account record's 0 is "unset", its default: from the command
		// line it connected a mailbox at 30 a minute, 10000 a day or 3
		// connections without a word.
		{"zero per-minute", person{follow: true}, w.login("alerts", mailbox, "--per-minute", "0"), cli.ExitUsage, "--per-minute 0: want at least 1"},
		{"zero per-day", person{follow: true}, w.login("alerts", mailbox, "--per-day", "0"), cli.ExitUsage, "--per-day 0: want at least 1"},
		{"zero max-conns", person{follow: true}, w.login("alerts", mailbox, "--max-conns", "0"), cli.ExitUsage, "--max-conns 0: want at least 1"},
		{"test with a zero timeout", person{}, []string{"test", "--account", "alerts", "--timeout", "0s"}, cli.ExitUsage, "--timeout 0s: want a duration above 0"},
		{"NATS unreachable", person{env: map[string]string{"RELAY_NATS_URL": "nats://127.0.0.1:1"}}, w.login("alerts", mailbox), cli.ExitFail, "is relay serve or relay sandbox running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := w.run(tt.p, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d (want %d), stderr lacks %q", r.code, tt.code, tt.want)
			}
		})
	}
	if w.fake.TokenCalls(fakeo365.GrantAuthorizationCode)+w.fake.TokenCalls(fakeo365.GrantClientCredentials)+w.fake.TokenCalls(fakeo365.GrantDeviceCode) != 0 {
		t.Fatal("a misconfigured command reached the identity platform")
	}
	w.mustBeEmpty("alerts")
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	r := w.run(person{}, "--help")
	if r.code != cli.ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{"login", "app", "import", "list", "test", "remove", "rotate-key", "Exit codes:", "130", "RELAY_NATS_URL"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// --max-message-size takes 1 byte to 35MB; above, or not a size, is a
// usage error before anyone signs in, and nothing is stored. Without it
// the account gets Office 365's 35 MB, which list shows.
func TestMaxMessageSizeFlag(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	for _, v := range []string{"36MB", "0", "ten"} {
		r := w.run(person{}, w.login("alerts", mailbox, "--max-message-size", v)...)
		if r.code != cli.ExitUsage || !strings.Contains(r.stderr, "max-message-size") {
			t.Fatalf("--max-message-size %s: exit %d, %s", v, r.code, r.stderr)
		}
		w.mustBeEmpty("alerts")
	}
	if r := w.run(person{follow: true}, w.login("alerts", mailbox)...); r.code != cli.ExitOK || !strings.Contains(r.stdout, "messages up to 35MB") {
		t.Fatalf("login: exit %d, %s", r.code, r.stdout)
	}
	r := w.run(person{}, "list", "--json")
	var items []struct {
		MaxMessageBytes int64 `json:"max_message_bytes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &items); err != nil || len(items) != 1 || items[0].MaxMessageBytes != 35<<20 {
		t.Fatalf("list --json %q (%v): want max_message_bytes 36700160", r.stdout, err)
	}
	if table := w.run(person{}, "list"); !strings.Contains(table.stdout, "MAX SIZE") || !strings.Contains(table.stdout, "35MB") {
		t.Fatalf("list:\n%s", table.stdout)
	}
}

// failsStoringNothing runs authtool as p with args and checks that it
// exits 1 saying each of want and "nothing was stored", and that nothing
// is stored for alias alerts.
func (w *world) failsStoringNothing(t *testing.T, p person, args, want []string) result {
	t.Helper()
	r := w.run(p, args...)
	if r.code != cli.ExitFail {
		t.Fatalf("exit %d, want %d", r.code, cli.ExitFail)
	}
	for _, want := range append(want, "nothing was stored") {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	w.mustBeEmpty("alerts")
	return r
}
