package consent_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue/queuetest"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// If the account cannot be written after the tokens were, the tokens are
// taken out again: nothing is left half-stored.
func TestEnrollRollsBackTokensWhenAccountWriteFails(t *testing.T) {
	ctx := testCtx(t)
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	q := queuetest.Start(t)
	reg, err := account.OpenRegistry(ctx, q.JS)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.NewKeyring(token.NamedKey{ID: "k1", Key: make([]byte, token.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, q.JS, keys)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := device(f).Run(ctx, func(consent.DeviceCode) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	// The account bucket disappears between the test mail and the write.
	if err := q.JS.DeleteKeyValue(ctx, account.Bucket); err != nil {
		t.Fatal(err)
	}
	acct := account.Account{Alias: "alerts", Mailbox: mailbox, Tenant: tenant, ClientID: clientID,
		Authority: f.AuthorityURL(), SMTPAddr: f.SMTPAddr(), CAFile: f.CAFile()}
	en := consent.Enroller{Accounts: reg, Store: store, Transport: &submit.Transport{CommandTimeout: 10 * time.Second}}
	err = en.Enroll(ctx, acct, tok, "", "")
	if err == nil || !strings.Contains(err.Error(), "its tokens were removed again") {
		t.Fatalf("Enroll = %v, want the failed account write reported with the rollback", err)
	}
	if len(f.Messages()) != 1 {
		t.Fatal("the test mail did not go first")
	}
	if _, err := store.RawGet(ctx, "alerts"); !errors.Is(err, token.ErrNotFound) {
		t.Fatalf("tokens left behind: %v", err)
	}
}

// Enroll seals the proxy URL as given, with the binding, and stores only
// its credential-free form in relay_accounts; earlier revisions of the
// record that an earlier version wrote with the credentials in plain text
// are taken out of the bucket's history.
func TestEnrollSealsProxyCredentials(t *testing.T) {
	ctx := testCtx(t)
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	q := queuetest.Start(t)
	reg, err := account.OpenRegistry(ctx, q.JS)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.NewKeyring(token.NamedKey{ID: "k1", Key: make([]byte, token.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, q.JS, keys)
	if err != nil {
		t.Fatal(err)
	}
	const oldPassword, password = "old-pr0xy-pw", "new-pr0xy-pw"
	acct := account.Account{Alias: "alerts", Mailbox: mailbox, Tenant: tenant, ClientID: clientID,
		Authority: f.AuthorityURL(), SMTPAddr: f.SMTPAddr(), CAFile: f.CAFile()}
	// The record as an earlier version stored it, twice.
	kv, err := q.JS.KeyValue(ctx, account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{oldPassword, oldPassword} {
		legacy := acct
		legacy.ProxyURL = "http://relay:" + pw + "@proxy.contoso.com:3128"
		b, _ := json.Marshal(legacy)
		if _, err := kv.Put(ctx, "alerts", b); err != nil {
			t.Fatal(err)
		}
	}

	tok, err := device(f).Run(ctx, func(consent.DeviceCode) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	acct.ProxyURL = "http://relay:" + password + "@proxy.contoso.com:3128"
	en := consent.Enroller{Accounts: reg, Store: store, Transport: &submit.Transport{CommandTimeout: 10 * time.Second}}
	if err := en.Enroll(ctx, acct, tok, "", ""); err != nil {
		t.Fatal(err)
	}
	rec, _, err := store.Get(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if rec.ProxyURL != acct.ProxyURL || rec.Binding != token.BindingOf(acct) {
		t.Fatalf("sealed proxy %q binding %+v: want the URL as given and the account's binding", account.RedactProxy(rec.ProxyURL), rec.Binding)
	}
	stored, err := reg.Get(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if stored.ProxyURL != "http://proxy.contoso.com:3128" {
		t.Errorf("relay_accounts proxy_url = %q, want http://proxy.contoso.com:3128", stored.ProxyURL)
	}
	hist, err := kv.History(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range hist {
		if strings.Contains(string(e.Value()), password) || strings.Contains(string(e.Value()), oldPassword) {
			t.Errorf("relay_accounts revision %d holds a proxy password", e.Revision())
		}
	}
	// The raw stream too (a direct get of any sequence).
	s, err := q.JS.Stream(ctx, "KV_"+account.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // removed
		}
		if strings.Contains(string(m.Data), "pr0xy-pw") {
			t.Errorf("KV_relay_accounts message %d holds a proxy password", seq)
		}
	}
}
