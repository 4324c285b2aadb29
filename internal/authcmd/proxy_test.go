package authcmd_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/fakeo365"
	"relay365/internal/testutil"
)

// authtool login --proxy with credentials: the sign-in goes through the
// proxy with them, relay_accounts keeps only http://host:port (in every
// revision), the credentials stay usable from the sealed record (authtool
// test refreshes the short-lived token through the proxy), and no output
// of login, test or list shows the password.
func TestLoginProxyCredentialsAreSealed(t *testing.T) {
	// Access tokens within the 5-minute refresh margin from the start, so
	// authtool test refreshes (once LastRefresh says they lived an hour).
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1, AccessTTL: 4 * time.Minute})
	const password = "pr0xy-Pa55w0rd-7f3a"
	proxy := testutil.StartProxy(t)
	proxyURL := "http://relay:" + password + "@" + proxy.Addr
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("relay:"+password))

	login := w.run(person{}, w.login("alerts", mailbox, "--flow", "device", "--proxy", proxyURL)...)
	if login.code != cli.ExitOK {
		t.Fatalf("login: exit %d", login.code)
	}
	n, auths := proxy.Requests("/oauth2/v2.0/token")
	if n == 0 || auths[n-1] != auth {
		t.Fatalf("the sign-in did not go through the proxy with its credentials: %d requests, %q", n, auths)
	}
	a, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if a.ProxyURL != "http://"+proxy.Addr {
		t.Errorf("relay_accounts proxy_url = %q, want http://%s", a.ProxyURL, proxy.Addr)
	}
	kv, err := w.js.KeyValue(testCtx(t), account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	hist, err := kv.History(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range hist {
		if bytes.Contains(e.Value(), []byte(password)) {
			t.Errorf("relay_accounts revision %d holds the proxy password", e.Revision())
		}
	}

	// Date the sign-in an hour before the token expires, as for an
	// Entra token near its end: a 4-minute token fresh from the sign-in
	// is not due yet (token.EffectiveMargin, half its life).
	rec, _, err := w.tokens.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	rec.LastRefresh = rec.Expiry.Add(-time.Hour)
	if _, err := w.tokens.Put(testCtx(t), rec); err != nil {
		t.Fatal(err)
	}

	test := w.run(person{}, "test", "--account", "alerts")
	if test.code != cli.ExitOK {
		t.Fatalf("test: exit %d", test.code)
	}
	if m, auths := proxy.Requests("/oauth2/v2.0/token"); m != n+1 || auths[m-1] != auth {
		t.Errorf("authtool test did not refresh through the sealed proxy: %d token requests (want %d), %q", m, n+1, auths)
	}
	list := w.run(person{}, "list")
	listJSON := w.run(person{}, "list", "--json")
	for name, out := range map[string]string{
		"login stdout": login.stdout, "login stderr": login.stderr, "test stdout": test.stdout, "test stderr": test.stderr,
		"list": list.stdout + list.stderr, "list --json": listJSON.stdout + listJSON.stderr,
	} {
		if strings.Contains(out, password) {
			t.Errorf("%s shows the proxy password", name)
		}
	}
}

// An account an earlier version stored with credentials in proxy_url: list
// says so, without showing them, and tells how to seal them.
func TestListWarnsOfPlainTextProxyCredentials(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	a, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	a.ProxyURL = "http://relay:legacy-pr0xy-pw@proxy.contoso.com:3128"
	b, _ := json.Marshal(a)
	kv, err := w.js.KeyValue(testCtx(t), account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(testCtx(t), "alerts", b); err != nil {
		t.Fatal(err)
	}
	r := w.run(person{}, "list")
	if r.code != cli.ExitOK || !strings.Contains(r.stderr, "Account alerts: its proxy_url in relay_accounts holds credentials in plain text") ||
		strings.Contains(r.stdout+r.stderr, "legacy-pr0xy-pw") {
		t.Fatalf("list: exit %d", r.code)
	}
}
