package token

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/testutil"
)

// The proxy URL, credentials included, is sealed with the record (the
// bucket holds none of it in plain text) and comes back as given; printing
// the record shows only its credential-free form.
func TestRecordSealsProxyURL(t *testing.T) {
	h := newHarness(t)
	store := h.process().store
	rec := Record{Account: "alerts", AccessToken: "AT-1", RefreshToken: "RT-1", Binding: BindingOf(boundAccount()),
		ProxyURL: "http://relay:pr0xy-secret@proxy.contoso.com:3128"}
	if _, err := store.Put(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	raw, err := store.RawGet(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{"pr0xy-secret", "proxy.contoso.com", "relay:"} {
		if strings.Contains(string(raw), plain) {
			t.Errorf("the sealed value holds %q in plain text", plain)
		}
	}
	got, _, err := store.Get(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if got.ProxyURL != rec.ProxyURL {
		t.Fatalf("opened proxy %q, want the URL as given", got.ProxyURL)
	}
	for _, out := range []string{got.String(), fmt.Sprintf("%+v", got)} {
		if strings.Contains(out, "pr0xy-secret") || !strings.Contains(out, "proxy=http://proxy.contoso.com:3128") {
			t.Errorf("the record prints its proxy with credentials or not at all: %s", out)
		}
	}
}

// The upgrade: an earlier version kept the proxy, credentials and all, in
// the account record. Binding the record on first use seals that URL with
// the tokens (logged without its credentials), and from then on the
// sealed one is used, whatever the account record says.
func TestRecordOfAnEarlierVersionSealsItsProxy(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	proxy := testutil.StartProxy(t)
	const password = "SECRET-proxy-pw"
	h.consent(p, "legacy", false, h.clock.Now().Add(time.Hour)) // no binding, as before
	acct, err := p.reg.Get(h.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	acct.ProxyURL = "http://relay:" + password + "@" + proxy.Addr
	b, _ := json.Marshal(acct) // as the earlier version wrote it: Registry.Put refuses it now
	kv, err := p.js.KeyValue(h.ctx, account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(h.ctx, "legacy", b); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.Token(h.ctx, "legacy"); err != nil {
		t.Fatal(err)
	}
	rec, _, err := p.store.Get(h.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Binding.Bound() || rec.ProxyURL != acct.ProxyURL {
		t.Fatalf("bound %t, sealed proxy %q: want the account's proxy URL sealed", rec.Binding.Bound(), account.RedactProxy(rec.ProxyURL))
	}
	logs := h.logs.String()
	if !strings.Contains(logs, `"proxy":"http://`+proxy.Addr+`"`) || strings.Contains(logs, password) {
		t.Errorf("the binding's log line should name the proxy without its credentials:\n%s", logs)
	}

	// The account record is cleaned up (authtool login does it): the
	// sealed proxy, credentials included, is what a refresh uses.
	acct.ProxyURL = account.RedactProxy(acct.ProxyURL)
	if err := p.reg.Put(h.ctx, acct); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Hour)
	if _, err := p.src.Token(h.ctx, "legacy"); err != nil {
		t.Fatal(err)
	}
	if n, auths := proxy.Requests("/token"); n != 1 || auths[0] != "Basic "+base64.StdEncoding.EncodeToString([]byte("relay:"+password)) {
		t.Errorf("refresh through the sealed proxy: %d requests, Proxy-Authorization %q", n, auths)
	}
}

// A record whose sealed proxy URL holds credentials refreshes through that
// proxy with them, while the account record shows the credential-free
// form only.
func TestRefreshUsesSealedProxy(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	proxy := testutil.StartProxy(t)
	rec := h.consent(p, "viaproxy", false, h.clock.Now().Add(time.Minute)) // inside the margin
	acct, err := p.reg.Get(h.ctx, "viaproxy")
	if err != nil {
		t.Fatal(err)
	}
	rec.Binding, rec.ProxyURL = BindingOf(acct), "http://relay:SECRET-pw@"+proxy.Addr
	if _, err := p.store.Put(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	acct.ProxyURL = "http://" + proxy.Addr
	if err := p.reg.Put(h.ctx, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.Token(h.ctx, "viaproxy"); err != nil {
		t.Fatal(err)
	}
	n, auths := proxy.Requests("/token")
	if n != 1 || auths[0] != "Basic "+base64.StdEncoding.EncodeToString([]byte("relay:SECRET-pw")) {
		t.Errorf("refresh through the proxy: %d requests, Proxy-Authorization %q", n, auths)
	}
}
