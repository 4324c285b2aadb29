package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
)

func boundAccount() account.Account {
	return account.Account{
		Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com",
		ClientID: "11111111-2222-3333-4444-555555555555", SMTPAddr: "smtp.office365.com:587", CAFile: "/etc/relay/ca.pem",
	}
}

// Each bound field, changed alone or together, is a mismatch naming
// exactly the fields that differ with both values; fields the binding does
// not cover, whitespace and the default SMTP endpoint are not.
func TestBindingCheck(t *testing.T) {
	b := BindingOf(boundAccount())
	if want := (Binding{SMTPAddr: "smtp.office365.com:587", CAFile: "/etc/relay/ca.pem", ClientID: "11111111-2222-3333-4444-555555555555"}); b != want {
		t.Fatalf("BindingOf = %+v, want %+v", b, want)
	}
	for _, tc := range []struct {
		name   string
		change func(*account.Account)
		fields []string
	}{
		{"same", func(*account.Account) {}, nil},
		{"smtp_addr", func(a *account.Account) { a.SMTPAddr = "mx.attacker.example:587" }, []string{"smtp_addr"}},
		{"smtp_addr port", func(a *account.Account) { a.SMTPAddr = "smtp.office365.com:25" }, []string{"smtp_addr"}},
		{"ca_file", func(a *account.Account) { a.CAFile = "/tmp/attacker-ca.pem" }, []string{"ca_file"}},
		{"ca_file removed", func(a *account.Account) { a.CAFile = "" }, []string{"ca_file"}},
		{"client_id", func(a *account.Account) { a.ClientID = "99999999-0000-0000-0000-000000000001" }, []string{"client_id"}},
		{"all three", func(a *account.Account) {
			a.SMTPAddr, a.CAFile, a.ClientID = "mx.attacker.example:587", "/tmp/attacker-ca.pem", "other"
		}, []string{"smtp_addr", "ca_file", "client_id"}},
		{"whitespace", func(a *account.Account) { a.SMTPAddr, a.ClientID = " "+a.SMTPAddr+"\t", a.ClientID+" " }, nil},
		{"unbound fields", func(a *account.Account) {
			a.Mailbox, a.MaxConns, a.PerMinute, a.ProxyURL, a.TokenURL = "other@contoso.com", 1, 5, "http://proxy:3128", "https://login.example/token"
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := boundAccount()
			tc.change(&a)
			err := b.Check(a)
			if tc.fields == nil {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			var be *BindingError
			if !errors.As(err, &be) {
				t.Fatalf("Check = %v, want a *BindingError", err)
			}
			var got []string
			for _, f := range be.Fields {
				got = append(got, f.Field)
			}
			if !reflect.DeepEqual(got, tc.fields) || be.FieldNames() != strings.Join(tc.fields, ",") || be.Account != "alerts" {
				t.Fatalf("fields %v (%s) of %s, want %v", got, be.FieldNames(), be.Account, tc.fields)
			}
			have := BindingOf(a)
			for _, f := range be.Fields {
				record := map[string]string{"smtp_addr": have.SMTPAddr, "ca_file": have.CAFile, "client_id": have.ClientID}[f.Field]
				bound := map[string]string{"smtp_addr": b.SMTPAddr, "ca_file": b.CAFile, "client_id": b.ClientID}[f.Field]
				if f.Record != record || f.Bound != bound {
					t.Errorf("%s: record %q bound %q, want %q and %q", f.Field, f.Record, f.Bound, record, bound)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%s is %q in relay_accounts but %q in the token binding", f.Field, record, bound)) {
					t.Errorf("the error does not name %s with both values: %v", f.Field, err)
				}
			}
			for _, name := range []string{"smtp_addr", "ca_file", "client_id"} {
				if !strings.Contains(be.FieldNames(), name) && strings.Contains(err.Error(), name+" is ") {
					t.Errorf("the error names %s, which did not change: %v", name, err)
				}
			}
			if !strings.Contains(err.Error(), "authtool login, app or import --account alerts") {
				t.Errorf("the error lacks the remedy: %v", err)
			}
		})
	}
}

// An empty SMTP endpoint is the default one, as Normalize makes it; a
// binding without an endpoint (a record of an earlier version, or a reply
// of an older token service) checks nothing.
func TestBindingDefaultsAndUnbound(t *testing.T) {
	a := boundAccount()
	a.SMTPAddr = ""
	if got := BindingOf(a).SMTPAddr; got != account.DefaultSMTPAddr {
		t.Errorf("BindingOf with no smtp_addr = %q, want %q", got, account.DefaultSMTPAddr)
	}
	if err := BindingOf(boundAccount()).Check(a); err != nil {
		t.Errorf("an account without smtp_addr is bound to the default: %v", err)
	}
	if (Binding{}).Bound() || (Binding{ClientID: "x"}).Bound() || !BindingOf(a).Bound() {
		t.Error("Bound: want false without an SMTP endpoint, true with")
	}
	evil := boundAccount()
	evil.SMTPAddr = "mx.attacker.example:587"
	if err := (Binding{}).Check(evil); err != nil {
		t.Errorf("an unbound token checks nothing: %v", err)
	}
}

// The binding is sealed with the record (the bucket holds none of it in
// plain text) and comes back as stored; a record of an earlier version,
// without one, still decodes, unbound.
func TestRecordSealsBinding(t *testing.T) {
	h := newHarness(t)
	store := h.process().store
	rec := Record{Account: "alerts", AccessToken: "AT-1", RefreshToken: "RT-1", Binding: BindingOf(boundAccount())}
	if _, err := store.Put(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	raw, err := store.RawGet(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{"smtp.office365.com", "11111111-2222", "/etc/relay/ca.pem"} {
		if strings.Contains(string(raw), plain) {
			t.Errorf("the sealed value holds %q in plain text", plain)
		}
	}
	got, _, err := store.Get(h.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if got.Binding != rec.Binding {
		t.Fatalf("opened binding %+v, want %+v", got.Binding, rec.Binding)
	}

	var old Record
	if err := json.Unmarshal([]byte(`{"account":"alerts","access_token":"AT","expiry":"2026-01-01T00:00:00Z","token_url":"https://t","state":"healthy"}`), &old); err != nil {
		t.Fatal(err)
	}
	if old.Binding.Bound() {
		t.Errorf("a record of an earlier version decodes as bound: %+v", old.Binding)
	}
}

// Trust on first use: a record stored before bindings existed is bound to
// the account record as the token service first finds it (endpoint, CA
// file, client id), logged, and from then on a rewritten account record
// no longer changes the binding the token service answers with.
func TestRecordOfAnEarlierVersionIsBoundOnFirstUse(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	old := h.consent(p, "legacy", false, h.clock.Now().Add(time.Hour)) // no binding, as before
	acct, err := p.reg.Get(h.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	if old.Binding.Bound() {
		t.Fatal("the harness stored a bound record")
	}

	tok, err := p.src.Token(h.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	want := BindingOf(acct)
	if tok.Binding != want {
		t.Fatalf("token binding %+v, want the account's %+v", tok.Binding, want)
	}
	rec, _, err := p.store.Get(h.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Binding != want || rec.RefreshToken != old.RefreshToken || rec.AccessToken != old.AccessToken {
		t.Fatalf("stored %v binding %+v, want the account's binding, tokens untouched", rec, rec.Binding)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "trust on first use") || !strings.Contains(logs, `"account":"legacy"`) {
		t.Errorf("the binding was not logged with the account:\n%s", logs)
	}

	// Bound once: a later rewrite of the account does not move it.
	evil := acct
	evil.SMTPAddr = "mx.attacker.example:587"
	if err := p.reg.Put(h.ctx, evil); err != nil {
		t.Fatal(err)
	}
	if tok, err = p.src.Token(h.ctx, "legacy"); err != nil || tok.Binding != want {
		t.Fatalf("after a rewrite: binding %+v (%v), want still %+v", tok.Binding, err, want)
	}
	if err := tok.Binding.Check(evil); err == nil {
		t.Error("the rewritten account passes the check")
	}
	if wrote, err := p.src.Bind(h.ctx, "legacy"); wrote || err != nil {
		t.Errorf("Bind of a bound record: wrote %t, %v", wrote, err)
	}
}

// A refresh presents the bound client id, whatever the account record
// says now.
func TestRefreshUsesBoundClientID(t *testing.T) {
	h := newHarness(t)
	p := h.process()
	rec := h.consent(p, "bound", false, h.clock.Now().Add(time.Minute)) // inside the margin
	acct, err := p.reg.Get(h.ctx, "bound")
	if err != nil {
		t.Fatal(err)
	}
	rec.Binding = BindingOf(acct)
	if _, err := p.store.Put(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	acct.ClientID = "rewritten-client"
	if err := p.reg.Put(h.ctx, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := p.src.Token(h.ctx, "bound"); err != nil {
		t.Fatal(err)
	}
	h.idp.mu.Lock()
	ids := maps.Clone(h.idp.clientIDs)
	h.idp.mu.Unlock()
	if ids["client-bound"] != 1 || ids["rewritten-client"] != 0 {
		t.Errorf("client ids presented: %v, want the bound client-bound only", ids)
	}
}
