package authcmd_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/cli"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

// connect stores a delegated account through authtool login (device flow).
func (w *world) connect(alias, mbox string) {
	w.t.Helper()
	if r := w.run(person{}, w.login(alias, mbox, "--flow", "device")...); r.code != cli.ExitOK {
		w.t.Fatalf("login %s: exit %d", alias, r.code)
	}
}

const appSecret = "app-secret-value-7f3a"

// connectApp stores an app-only account through authtool app.
func (w *world) connectApp(alias, mbox string) {
	w.t.Helper()
	w.fake.RegisterApp("99999999-0000-0000-0000-000000000001", appSecret)
	args := append(w.target("app", alias, mbox), "--client-id", "99999999-0000-0000-0000-000000000001",
		"--client-secret-file", testutil.WriteFile(w.t, "secret", appSecret+"\n"))
	if r := w.run(person{}, args...); r.code != cli.ExitOK {
		w.t.Fatalf("app %s: exit %d", alias, r.code)
	}
}

func TestApp(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	w.connectApp("billing", "billing@contoso.com")
	a, err := w.accounts.Get(testCtx(t), "billing")
	if err != nil || !a.AppOnly || a.Scopes[0] != account.ScopeAppOnly {
		t.Fatalf("stored app-only account %+v, %v", a, err)
	}
	rec := w.record("billing")
	if rec.ClientSecret != appSecret || rec.RefreshToken != "" || rec.AccessToken == "" {
		t.Fatalf("stored record %v: want the client secret (sealed) and no refresh token", rec)
	}
	msgs := w.fake.Messages()
	if len(msgs) != 1 || msgs[0].Mailbox != "billing@contoso.com" {
		t.Fatalf("app-only test mail: %+v", msgs)
	}
	if w.fake.TokenCalls(fakeo365.GrantClientCredentials) != 1 {
		t.Fatal("client credentials not used")
	}
	// The secret can also come from stdin, never from a flag value.
	args := append(w.target("app", "billing2", "billing@contoso.com"), "--client-id", "99999999-0000-0000-0000-000000000001", "--client-secret-file", "-")
	if r := w.run(person{stdin: appSecret}, args...); r.code != cli.ExitOK {
		t.Fatalf("secret from stdin: exit %d", r.code)
	}
}

func TestAppOnlyMailboxRefusedPrintsExchangeSteps(t *testing.T) {
	w := newWorld(t, fakeo365.Config{})
	w.fake.RegisterApp(clientID, appSecret)
	// An app-only token for a tenant whose mailboxes refuse it: the fake
	// answers 535 5.7.3 when the token is not for Outlook; ask for Graph.
	args := append(w.target("app", "billing", "billing@contoso.com"),
		"--client-secret-env", "S", "--scopes", "https://graph.microsoft.com/.default")
	r := w.run(person{env: map[string]string{"S": appSecret}}, args...)
	if r.code != cli.ExitFail {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{"535 5.7.3", "New-ServicePrincipal -AppId " + clientID, "Add-MailboxPermission -Identity billing@contoso.com", "nothing was stored"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	noSecrets(t, []token.Record{{ClientSecret: appSecret}}, r.stdout, r.stderr)
	w.mustBeEmpty("billing")
}

func TestImport(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	// "Another tool" signed in and holds a refresh token.
	other, err := consent.Device{ClientID: clientID, DeviceURL: w.fake.DeviceURL(tenant), TokenURL: w.fake.TokenURL(tenant),
		Scopes: account.DefaultDelegatedScopes(), Interval: time.Millisecond}.Run(testCtx(t), func(consent.DeviceCode) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	rtFile := testutil.WriteFile(t, "rt", other.RefreshToken+"\n")
	r := w.run(person{}, append(w.target("import", "alerts", mailbox), "--refresh-token-file", rtFile)...)
	if r.code != cli.ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	if w.fake.TokenCalls(fakeo365.GrantRefreshToken) != 1 {
		t.Fatal("the refresh token was not redeemed exactly once")
	}
	rec := w.record("alerts")
	if rec.RefreshToken == "" || rec.RefreshToken == other.RefreshToken {
		t.Fatal("the rotated refresh token was not stored")
	}
	if len(w.fake.Messages()) != 1 {
		t.Fatal("no test mail")
	}
	noSecrets(t, []token.Record{rec, {RefreshToken: other.RefreshToken}}, r.stdout, r.stderr)

	// A dead refresh token: the remedy, and nothing stored.
	dead := testutil.WriteFile(t, "dead", "not-a-refresh-token")
	r = w.run(person{}, append(w.target("import", "ops", "ops@contoso.com"), "--refresh-token-file", dead)...)
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "invalid_grant") || !strings.Contains(r.stderr, "run: authtool login --account ops") ||
		!strings.Contains(r.stderr, "nothing was stored") {
		t.Fatalf("dead token: exit %d", r.code)
	}
	w.mustBeEmpty("ops")
}

func TestList(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	w.connectApp("billing", "billing@contoso.com")
	recs := []token.Record{w.record("alerts"), w.record("billing")}

	r := w.run(person{}, "list", "--json")
	if r.code != cli.ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	var items []struct {
		Account     string    `json:"account"`
		Mailbox     string    `json:"mailbox"`
		AppOnly     bool      `json:"app_only"`
		State       string    `json:"state"`
		TokenExpiry time.Time `json:"token_expiry"`
		KeyID       string    `json:"key_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &items); err != nil {
		t.Fatalf("list --json: %v", err)
	}
	if len(items) != 2 || items[0].Account != "alerts" || items[1].Account != "billing" || !items[1].AppOnly {
		t.Fatalf("list --json = %+v", items)
	}
	for _, it := range items {
		if it.State != "healthy" || it.TokenExpiry.Before(time.Now()) || it.KeyID == "" {
			t.Fatalf("item %+v", it)
		}
	}
	table := w.run(person{}, "list")
	if table.code != cli.ExitOK || !strings.Contains(table.stdout, "alerts") || !strings.Contains(table.stdout, "app-only") ||
		!strings.Contains(table.stdout, "healthy") {
		t.Fatalf("list table:\n%s", table.stdout)
	}
	noSecrets(t, recs, r.stdout, r.stderr, table.stdout, table.stderr)
	if strings.Contains(r.stdout, appSecret) || strings.Contains(table.stdout, appSecret) {
		t.Fatal("list shows the client secret")
	}

	// Without the key file the registry still lists; states are unknown.
	nokey := w.run(person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": ""}}, "list", "--json")
	if nokey.code != cli.ExitOK || !strings.Contains(nokey.stdout, `"state":"unknown"`) {
		t.Fatalf("list without key: exit %d %s", nokey.code, nokey.stdout)
	}
}

func TestTestCommand(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	r := w.run(person{}, "test", "--account", "alerts", "--to", "ops@contoso.com")
	if r.code != cli.ExitOK || !strings.Contains(r.stdout, "test mail accepted") {
		t.Fatalf("exit %d", r.code)
	}
	msgs := w.fake.Messages()
	if len(msgs) != 2 || msgs[1].To[0] != "ops@contoso.com" || msgs[1].Mailbox != mailbox {
		t.Fatalf("test mail not delivered: %+v", msgs)
	}
	noSecrets(t, []token.Record{w.record("alerts")}, r.stdout, r.stderr)

	w.fake.DisableSMTPAuth(tenant, true)
	r = w.run(person{}, "test", "--account", "alerts")
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "Set-CASMailbox") {
		t.Fatalf("refused test: exit %d", r.code)
	}
	r = w.run(person{}, "test", "--account", "nobody")
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "account not found") {
		t.Fatalf("unknown account: exit %d", r.code)
	}
}

func TestRemove(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	w.connect("ops", mailbox)
	r := w.run(person{}, "remove", "--account", "alerts", "--json")
	if r.code != cli.ExitOK || !strings.Contains(r.stdout, `"account_removed":true`) || !strings.Contains(r.stdout, `"tokens_removed":true`) {
		t.Fatalf("exit %d: %s", r.code, r.stdout)
	}
	w.mustBeEmpty("alerts")
	if a, tk := w.stored("ops"); !a || !tk {
		t.Fatal("remove touched another account")
	}
	r = w.run(person{}, "remove", "--account", "alerts")
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "no account alerts") {
		t.Fatalf("second remove: exit %d", r.code)
	}
}

// rotate-key must leave nothing readable under the retired key: not the
// current records, and not their earlier revisions, which hold refresh
// tokens Microsoft has not revoked.
func TestRotateKeyLeavesNoRevisionUnderTheOldKey(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	w.connectApp("billing", "billing@contoso.com")
	ctx := testCtx(t)
	// The token service's refreshes before the rotation: more revisions
	// under the old key.
	for range 3 {
		for _, alias := range []string{"alerts", "billing"} {
			rec, rev, err := w.tokens.Get(ctx, alias)
			if err != nil {
				t.Fatal(err)
			}
			rec.FailCount++
			if _, err := w.tokens.Update(ctx, rec, rev); err != nil {
				t.Fatal(err)
			}
		}
	}
	oldKeys, err := token.LoadKeyring(w.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(t.TempDir(), "new.key")
	if _, err := token.GenerateKeyFile(newFile); err != nil {
		t.Fatal(err)
	}
	if r := w.run(person{}, "rotate-key", "--new-key-file", newFile); r.code != cli.ExitOK {
		t.Fatalf("rotate-key: exit %d\n%s", r.code, r.stderr)
	}
	left := tokentest.SealedValues(t, ctx, queuetest.Connect(t, w.natsURL))
	if len(left) == 0 {
		t.Fatal("the bucket's stream holds no value at all")
	}
	tokentest.NoneOpens(t, oldKeys, left)
}

func TestRotateKey(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	w.connectApp("billing", "billing@contoso.com")
	oldKeys, err := token.LoadKeyring(w.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(t.TempDir(), "new.key")
	newID, err := token.GenerateKeyFile(newFile)
	if err != nil {
		t.Fatal(err)
	}
	r := w.run(person{}, "rotate-key", "--new-key-file", newFile)
	if r.code != cli.ExitOK || !strings.Contains(r.stdout, "re-sealed 2 token record(s) under key "+newID) ||
		!strings.Contains(r.stdout, "list the new key first") {
		t.Fatalf("exit %d", r.code)
	}
	for _, alias := range []string{"alerts", "billing"} {
		raw, err := w.tokens.RawGet(testCtx(t), alias)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := token.SealedKeyID(raw); id != newID {
			t.Fatalf("%s sealed with %q, want the new key %s", alias, id, newID)
		}
		// The old key alone no longer opens it...
		if _, _, err := oldKeys.Open([]byte(token.Bucket+"/"+alias), raw); !errors.Is(err, token.ErrUnknownKey) {
			t.Fatalf("old key opens the re-sealed record: %v", err)
		}
	}
	// ...the key file built as told (new first, old after) does, and the
	// accounts still send.
	newRaw, _ := os.ReadFile(newFile)
	oldRaw, _ := os.ReadFile(w.keyFile)
	merged := testutil.WriteFile(t, "merged.key", string(newRaw)+string(oldRaw))
	r = w.run(person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": merged}}, "test", "--account", "billing")
	if r.code != cli.ExitOK {
		t.Fatalf("test after rotation: exit %d", r.code)
	}
	// The new key may already be in the key file (the no-pause order):
	// rotating again finds everything current.
	again := w.run(person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": merged}}, "rotate-key", "--new-key-file", newFile, "--json")
	var res struct {
		Resealed []string `json:"resealed"`
		Current  []string `json:"already_current"`
	}
	if again.code != cli.ExitOK || json.Unmarshal([]byte(again.stdout), &res) != nil || len(res.Resealed) != 0 || len(res.Current) != 2 {
		t.Fatalf("rotating again: exit %d %s", again.code, again.stdout)
	}
	// A different key under an id already in use is refused.
	clash := testutil.WriteFile(t, "clash.key", newID+":"+base64.StdEncoding.EncodeToString(make([]byte, token.KeySize))+"\n")
	r2 := w.run(person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": merged}}, "rotate-key", "--new-key-file", clash)
	if r2.code != cli.ExitUsage || !strings.Contains(r2.stderr, "two different keys") {
		t.Fatalf("clashing key id: exit %d", r2.code)
	}
	// No key material in any output.
	for _, line := range strings.Split(string(newRaw)+string(oldRaw), "\n") {
		if _, b64, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			for _, out := range []string{r.stdout, r.stderr, again.stdout, again.stderr} {
				if strings.Contains(out, strings.TrimSpace(b64)) {
					t.Fatal("output holds key material")
				}
			}
		}
	}
}

// The rotation procedure of SECURITY.md ("Key handling and rotation"), run
// against a relay that keeps refreshing tokens between its steps, as a
// running token service does every hour: at the end, with the old key
// gone from the key file, every record must still open.
func TestKeyRotationProcedureLosesNoRecord(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	ctx := testCtx(t)
	oldRaw, err := os.ReadFile(w.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// The running relay's token path with the key file it was started with.
	refresh := func(keyFile string) {
		t.Helper()
		keys, err := token.LoadKeyring(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		st, err := token.OpenStore(ctx, w.js, keys)
		if err != nil {
			t.Fatal(err)
		}
		src := token.NewSource(token.SourceConfig{Store: st, Accounts: w.accounts})
		defer src.Close()
		if _, err := src.ForceRefresh(ctx, "alerts"); err != nil {
			t.Fatalf("the relay's refresh: %v", err)
		}
	}
	// 1. relay keygen --out new.key
	newFile := filepath.Join(t.TempDir(), "new.key")
	newID, err := token.GenerateKeyFile(newFile)
	if err != nil {
		t.Fatal(err)
	}
	newRaw, err := os.ReadFile(newFile)
	if err != nil {
		t.Fatal(err)
	}
	// 2. the new key as the last line of the key file; restart.
	keyFile := testutil.WriteFile(t, "token.key", string(oldRaw)+string(newRaw))
	refresh(keyFile)
	// 3. the new key first, the old one after it; restart. (Running
	// rotate-key before this step was the mistake: the relays, still
	// sealing with the old key, put each record back under it at its next
	// refresh, and the last step then lost it.)
	keyFile = testutil.WriteFile(t, "token.key", string(newRaw)+string(oldRaw))
	refresh(keyFile)
	// 4. authtool rotate-key --new-key-file new.key, with the relays
	// refreshing before and after it.
	env := person{env: map[string]string{"RELAY_TOKEN_KEY_FILE": keyFile}}
	if r := w.run(env, "rotate-key", "--new-key-file", newFile); r.code != cli.ExitOK {
		t.Fatalf("rotate-key: exit %d\n%s", r.code, r.stderr)
	}
	refresh(keyFile)
	// 5. authtool list shows the new key for every account; then the old
	// key line goes, and the relays restart.
	var items []struct {
		Account string `json:"account"`
		KeyID   string `json:"key_id"`
	}
	r := w.run(env, "list", "--json")
	if r.code != cli.ExitOK || json.Unmarshal([]byte(r.stdout), &items) != nil || len(items) != 1 || items[0].KeyID != newID {
		t.Fatalf("authtool list before removing the old key: exit %d %s, want key %s", r.code, r.stdout, newID)
	}
	final := testutil.WriteFile(t, "final.key", string(newRaw))
	keys, err := token.LoadKeyring(final)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := w.tokens.RawGet(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	id, _ := token.SealedKeyID(raw)
	if _, _, err := keys.Open([]byte(token.Bucket+"/alerts"), raw); err != nil {
		t.Fatalf("after the procedure the record of alerts is sealed with key %s and does not open with the key file (new key %s): %v", id, newID, err)
	}
}
