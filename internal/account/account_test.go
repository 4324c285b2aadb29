package account

import (
	"context"
	"errors"
	"relay365/internal/message"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func validAccount() Account {
	return Account{
		Alias:    "alerts",
		Mailbox:  "alerts@contoso.com",
		Tenant:   "contoso.onmicrosoft.com",
		ClientID: "11111111-2222-3333-4444-555555555555",
	}
}

func TestNormalizeDefaults(t *testing.T) {
	a := validAccount()
	a.Normalize()
	if a.Authority != DefaultAuthority || a.SMTPAddr != DefaultSMTPAddr || a.FromPolicy != message.PolicyRewrite {
		t.Fatalf("defaults not applied: %+v", a)
	}
	if a.PerMinute != 30 || a.PerDay != 10000 || a.MaxConns != 3 {
		t.Fatalf("limits not defaulted: %+v", a)
	}
	if !slices.Equal(a.Scopes, []string{ScopeSMTPSend, ScopeOfflineAccess}) {
		t.Fatalf("delegated scopes = %v", a.Scopes)
	}
	if a.CreatedAt.IsZero() {
		t.Fatal("CreatedAt not set")
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}

	app := validAccount()
	app.AppOnly = true
	app.Normalize()
	if !slices.Equal(app.Scopes, []string{ScopeAppOnly}) {
		t.Fatalf("app-only scopes = %v", app.Scopes)
	}
	if err := app.Validate(); err != nil {
		t.Fatal(err)
	}

	// Idempotent and keeps explicit values.
	b := validAccount()
	b.PerMinute, b.SMTPAddr, b.Authority = 10, "smtp.office365.us:587", "https://login.microsoftonline.us/"
	b.Normalize()
	c := b
	c.Normalize()
	if b.PerMinute != 10 || b.SMTPAddr != "smtp.office365.us:587" || b.Authority != "https://login.microsoftonline.us" {
		t.Fatalf("explicit values changed: %+v", b)
	}
	if !slices.Equal(b.Scopes, c.Scopes) || b.CreatedAt != c.CreatedAt {
		t.Fatal("Normalize is not idempotent")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Account)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*Account) {}, ""},
		{"alias empty", func(a *Account) { a.Alias = "" }, "alias is empty"},
		{"alias upper", func(a *Account) { a.Alias = "Alerts" }, `alias "Alerts" is invalid`},
		{"alias dot", func(a *Account) { a.Alias = "a.b" }, "alias"},
		{"alias wildcard", func(a *Account) { a.Alias = "a*" }, "alias"},
		{"alias leading dash", func(a *Account) { a.Alias = "-a" }, "alias"},
		{"alias 64 chars", func(a *Account) { a.Alias = strings.Repeat("a", 64) }, "alias"},
		{"alias 63 chars", func(a *Account) { a.Alias = strings.Repeat("a", 63) }, ""},
		{"mailbox empty", func(a *Account) { a.Mailbox = "" }, "mailbox"},
		{"mailbox display name", func(a *Account) { a.Mailbox = "Ops <ops@contoso.com>" }, "mailbox"},
		{"tenant empty", func(a *Account) { a.Tenant = "" }, "tenant is empty"},
		{"tenant slash", func(a *Account) { a.Tenant = "a/b" }, "tenant"},
		{"tenant common app-only", func(a *Account) { a.Tenant = "common"; a.AppOnly = true; a.Scopes = nil }, "app_only"},
		{"client id empty", func(a *Account) { a.ClientID = "" }, "client_id is empty"},
		{"authority http", func(a *Account) { a.Authority = "http://login.example.com" }, "authority"},
		{"token url loopback http ok", func(a *Account) { a.TokenURL = "http://127.0.0.1:9999/token" }, ""},
		{"token url relative", func(a *Account) { a.TokenURL = "/token" }, "token_url"},
		{"delegated without offline_access", func(a *Account) { a.Scopes = []string{ScopeSMTPSend} }, "offline_access"},
		{"app-only wrong scope", func(a *Account) { a.AppOnly = true; a.Scopes = []string{ScopeSMTPSend} }, ".default"},
		{"smtp addr no port", func(a *Account) { a.SMTPAddr = "smtp.office365.com" }, "smtp_addr"},
		{"smtp addr bad port", func(a *Account) { a.SMTPAddr = "smtp.office365.com:0" }, "smtp_addr"},
		{"from policy unknown", func(a *Account) { a.FromPolicy = "maybe" }, "from_policy"},
		{"allow without send_as", func(a *Account) { a.FromPolicy = message.PolicyAllow }, "send_as is empty"},
		{"allow with send_as", func(a *Account) { a.FromPolicy = message.PolicyAllow; a.SendAs = []string{"noreply@contoso.com"} }, ""},
		{"send_as bad", func(a *Account) { a.FromPolicy = message.PolicyAllow; a.SendAs = []string{"nope"} }, "send_as"},
		{"negative per_minute", func(a *Account) { a.PerMinute = -1 }, "per_minute"},
		{"negative per_day", func(a *Account) { a.PerDay = -1 }, "per_day"},
		{"negative max_conns", func(a *Account) { a.MaxConns = -1 }, "max_conns"},
		{"negative max_message_bytes", func(a *Account) { a.MaxMessageBytes = -1 }, "max_message_bytes"},
		{"max_message_bytes over 35 MB", func(a *Account) { a.MaxMessageBytes = 36 << 20 }, "max_message_bytes"},
		{"proxy bad scheme", func(a *Account) { a.ProxyURL = "ftp://proxy:21" }, "proxy_url"},
		{"proxy ok", func(a *Account) { a.ProxyURL = "http://proxy.corp:3128" }, ""},
		// authtool prints these errors: credentials in an endpoint URL
		// stay out of them (the loop checks), as for the proxy and NATS.
		{"authority with credentials not a URL", func(a *Account) { a.Authority = "http://u:s3cret@x y" }, "authority"},
		{"token url with credentials over http", func(a *Account) { a.TokenURL = "http://u:s3cret@login.example.com/token" }, "token_url"},
		{"auth url with a token over ftp", func(a *Account) { a.AuthURL = "ftp://s3cret@login.example.com/auth" }, "auth_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := validAccount()
			tt.mutate(&a)
			a.Normalize()
			err := a.Validate()
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error %q shows the credentials", err)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	err := Account{Alias: "x"}.Validate()
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"mailbox", "tenant", "client_id", "smtp_addr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestEndpoints(t *testing.T) {
	a := validAccount()
	au, tu, du := a.Endpoints() // works before Normalize too
	base := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
	if au != base+"authorize" || tu != base+"token" || du != base+"devicecode" {
		t.Fatalf("derived endpoints: %s %s %s", au, tu, du)
	}
	a.Authority = "https://login.microsoftonline.us/"
	a.TokenURL = "http://127.0.0.1:1/token"
	au, tu, _ = a.Endpoints()
	if au != "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/authorize" || tu != "http://127.0.0.1:1/token" {
		t.Fatalf("override endpoints: %s %s", au, tu)
	}
}

// openRegistry opens a registry on a fresh JetStream server.
func openRegistry(t *testing.T) (context.Context, jetstream.JetStream, *Registry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	js := startJetStream(t)
	reg, err := OpenRegistry(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, reg
}

func TestRegistry(t *testing.T) {
	ctx, js, reg := openRegistry(t)
	// Opening twice is fine (CreateOrUpdate).
	if _, err := OpenRegistry(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 5 {
		t.Fatalf("history = %d, want 5", st.History())
	}

	list, err := reg.List(ctx)
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("empty List = %v, %v; want empty non-nil slice and no error", list, err)
	}
	if _, err := reg.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
	if err := reg.Delete(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete missing: %v, want ErrNotFound", err)
	}

	bad := validAccount()
	bad.Mailbox = "nope"
	if err := reg.Put(ctx, bad); err == nil || !strings.Contains(err.Error(), "mailbox") {
		t.Fatalf("Put invalid: %v", err)
	}
	if _, err := reg.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatal("invalid account was stored")
	}

	a := validAccount()
	if err := reg.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	b := validAccount()
	b.Alias, b.Mailbox, b.AppOnly = "billing", "billing@contoso.com", true
	if err := reg.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Get(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if got.Mailbox != a.Mailbox || got.SMTPAddr != DefaultSMTPAddr || got.PerMinute != 30 || got.CreatedAt.IsZero() {
		t.Fatalf("Get returned %+v", got)
	}
	list, err = reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Alias != "alerts" || list[1].Alias != "billing" {
		t.Fatalf("List = %+v", list)
	}
	if !list[1].AppOnly || list[1].Scopes[0] != ScopeAppOnly {
		t.Fatalf("app-only account round trip: %+v", list[1])
	}

	if err := reg.Delete(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	list, err = reg.List(ctx)
	if err != nil || len(list) != 1 || list[0].Alias != "billing" {
		t.Fatalf("List after delete = %+v, %v", list, err)
	}
	if _, err := reg.Get(ctx, "Not.Valid"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get invalid alias: %v", err)
	}
}

func TestListCorruptRecordNamesAlias(t *testing.T) {
	ctx, js, reg := openRegistry(t)
	kv, _ := js.KeyValue(ctx, Bucket)
	if _, err := kv.Put(ctx, "broken", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.List(ctx); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("List with corrupt record: %v", err)
	}
}

func TestWatch(t *testing.T) {
	ctx, js, reg := openRegistry(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := validAccount()
	if err := reg.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	changes, err := reg.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func() Change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-ctx.Done():
			t.Fatal("no change arrived")
		}
		return Change{}
	}
	// The existing account first, then what happens after.
	if c := next(); c.Alias != "alerts" || c.Deleted || c.Err != nil || c.Account.Mailbox != a.Mailbox {
		t.Fatalf("initial: %+v", c)
	}
	a.PerMinute = 10
	if err := reg.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Account.PerMinute != 10 {
		t.Fatalf("update: %+v", c)
	}
	if err := reg.Delete(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Alias != "alerts" || !c.Deleted {
		t.Fatalf("delete: %+v", c)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	if _, err := kv.Put(ctx, "broken", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Alias != "broken" || c.Err == nil {
		t.Fatalf("corrupt record: %+v", c)
	}
	cancel()
	for range changes {
	}
}

// A proxy URL's credential-free form keeps scheme, host and port only;
// credentials are detected whether a password is given or not.
func TestRedactProxy(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		creds    bool
	}{
		{"", "", false},
		{"http://proxy.contoso.com:3128", "http://proxy.contoso.com:3128", false},
		{"http://relay:s3cret@proxy.contoso.com:3128", "http://proxy.contoso.com:3128", true},
		{"https://relay:s3cret@proxy.contoso.com/path?x=y#f", "https://proxy.contoso.com", true},
		{"socks5://relay@[::1]:1080", "socks5://[::1]:1080", true},
		{"http://%zz@proxy", "(invalid proxy URL)", false},
	} {
		if got := RedactProxy(tc.in); got != tc.want || strings.Contains(got, "s3cret") {
			t.Errorf("RedactProxy(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := ProxyHasCredentials(tc.in); got != tc.creds {
			t.Errorf("ProxyHasCredentials(%q) = %t, want %t", tc.in, got, tc.creds)
		}
	}
}

// Credentials never reach relay_accounts through the registry: Put refuses
// a proxy URL holding them, without quoting them, and stores the
// credential-free form.
func TestRegistryRefusesProxyCredentials(t *testing.T) {
	ctx, _, reg := openRegistry(t)
	a := validAccount()
	a.ProxyURL = "http://relay:s3cret@proxy.contoso.com:3128"
	err := reg.Put(ctx, a)
	if err == nil || !strings.Contains(err.Error(), "proxy_url holds credentials") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Put with proxy credentials: %v", err)
	}
	if _, err := reg.Get(ctx, a.Alias); !errors.Is(err, ErrNotFound) {
		t.Fatal("the account was stored")
	}
	a.ProxyURL = RedactProxy(a.ProxyURL)
	if err := reg.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
}

// TestTenantKey: tenant-wide pauses match accounts by the tenant ID learnt
// at sign-in, whichever name Tenant gives the tenant; without one, by
// Tenant as configured (lower case), and the multi-tenant names match
// nothing. A tenant_id that is no GUID is refused.
func TestTenantKey(t *testing.T) {
	const id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	for _, tc := range []struct {
		tenant, tenantID string
		key              string
		byID             bool
	}{
		{"contoso.onmicrosoft.com", strings.ToUpper(id), id, true},
		{"organizations", id, id, true},
		{strings.ToUpper(id), "", id, false},
		{"Contoso.onmicrosoft.com", "", "contoso.onmicrosoft.com", false},
		{"Organizations", "", "", false},
		{"common", "", "", false},
		{"consumers", ConsumerTenantID, "", false},
		{"common", strings.ToUpper(ConsumerTenantID), "", false},
		{strings.ToUpper(ConsumerTenantID), "", "", false},
	} {
		a := validAccount()
		a.Tenant, a.TenantID = tc.tenant, tc.tenantID
		a.Normalize()
		if key, byID := a.TenantKey(); key != tc.key || byID != tc.byID {
			t.Errorf("tenant %q, tenant_id %q: key %q (by id %v), want %q (%v)", tc.tenant, tc.tenantID, key, byID, tc.key, tc.byID)
		}
	}
	a := validAccount()
	a.TenantID = "contoso.onmicrosoft.com"
	if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "tenant_id") {
		t.Errorf("a domain as tenant_id: %v, want it refused", err)
	}
}

// TestSameTenant: accounts that both know their tenant ID match by it;
// one that does not (connected by an earlier version) matches the other
// by its ID or by their tenant as configured; the names of no one tenant
// match nothing.
func TestSameTenant(t *testing.T) {
	const id, other = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0b5e1f3a-9c1d-4d8e-a0f2-3c4b5d6e7f80"
	acct := func(tenant, tenantID string) Account {
		a := validAccount()
		a.Tenant, a.TenantID = tenant, tenantID
		a.Normalize()
		return a
	}
	for _, tc := range []struct {
		a, b Account
		same bool
	}{
		{acct("contoso.com", id), acct(id, id), true},
		{acct("contoso.com", id), acct("contoso.com", other), false},
		{acct("contoso.com", id), acct("Contoso.com", ""), true},
		{acct("contoso.com", id), acct(strings.ToUpper(id), ""), true},
		{acct("contoso.com", id), acct("fabrikam.com", ""), false},
		{acct("contoso.com", ""), acct("contoso.com", ""), true},
		{acct("organizations", id), acct("organizations", ""), false},
		{acct("common", ""), acct("common", ""), false},
		{acct("consumers", ConsumerTenantID), acct("common", ConsumerTenantID), false},
	} {
		if got := tc.a.SameTenant(tc.b); got != tc.same || tc.b.SameTenant(tc.a) != tc.same {
			t.Errorf("%q/%q and %q/%q: same tenant %v, want %v", tc.a.Tenant, tc.a.TenantID, tc.b.Tenant, tc.b.TenantID, got, tc.same)
		}
	}
}

// TestTenantKeyIgnoresAHandWrittenTenantID: the relay's lanes take account
// records as stored, unvalidated (an earlier version's, one rewritten by
// hand with nats kv put). A tenant_id that is no GUID was not learnt at
// sign-in: it is no key (nor claimed as "learnt at sign-in" on /status),
// and the account is matched by its tenant as configured; "organizations"
// typed there must not join unrelated organisations.
func TestTenantKeyIgnoresAHandWrittenTenantID(t *testing.T) {
	for _, tc := range []struct{ tenant, tenantID, key string }{
		{"contoso.onmicrosoft.com", "contoso.com", "contoso.onmicrosoft.com"},
		{"organizations", "organizations", ""},
	} {
		a := validAccount()
		a.Tenant, a.TenantID = tc.tenant, tc.tenantID
		a.Normalize()
		if key, byID := a.TenantKey(); key != tc.key || byID {
			t.Errorf("tenant %q, hand-written tenant_id %q: key %q (by id %v), want %q, not by id", tc.tenant, tc.tenantID, key, byID, tc.key)
		}
	}
	a, b := validAccount(), validAccount()
	a.Tenant, a.TenantID = "organizations", "organizations"
	b.Tenant, b.TenantID = "common", "organizations"
	if a.SameTenant(b) {
		t.Error("two accounts with tenant_id \"organizations\" written by hand are one tenant")
	}
}
