package tokensvc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"

	"relay365/internal/account"
	"relay365/internal/testutil"
)

// A proxy URL with credentials is a secret: enrolment seals it with the
// tokens and leaves only scheme://host:port in relay_accounts, yet the
// token service still refreshes through the proxy with the credentials,
// and no log, event or token.status holds the password.
func TestProxyCredentialsAreSealedAndStillUsed(t *testing.T) {
	e := newEnv(t)
	const user, password = "relay", "pr0xy-Pa55w0rd-7f3a"
	proxy := testutil.StartProxy(t)
	e.secrets.Add("proxy password", password)
	e.replica("r1")
	e.consentWith("proxied", func(a *account.Account) { a.ProxyURL = "http://" + user + ":" + password + "@" + proxy.Addr })

	kv, err := e.nats.JS.KeyValue(e.ctx, account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	hist, err := kv.History(e.ctx, "proxied")
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range hist {
		if bytes.Contains(en.Value(), []byte(password)) {
			t.Errorf("relay_accounts revision %d holds the proxy password in plain text", en.Revision())
		}
	}
	a, err := e.reg.Get(e.ctx, "proxied")
	if err != nil {
		t.Fatal(err)
	}
	if a.ProxyURL != "http://"+proxy.Addr {
		t.Errorf("the account record's proxy_url is %q, want the credential-free http://%s", a.ProxyURL, proxy.Addr)
	}
	raw, err := e.store.RawGet(e.ctx, "proxied")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(password)) {
		t.Error("relay_tokens holds the proxy password in plain text")
	}

	c := e.client()
	if _, err := c.ForceRefresh(e.ctx, "proxied"); err != nil {
		t.Fatal(err)
	}
	n, auths := proxy.Requests("/oauth2/v2.0/token")
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	if n != 1 || auths[0] != want {
		t.Errorf("the proxy saw %d token requests with Proxy-Authorization %q, want 1 with the sealed credentials", n, auths)
	}
	st, err := c.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	e.secrets.Check(t, "token.status", b)
	// logs and events are checked at the end of the test (newEnv)
}
