package tokensvc

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/token"
)

// token.get and token.refresh answer with the binding sealed at consent:
// the account's SMTP endpoint, CA file and client id, as smtp_addr,
// ca_file and client_id, which the client hands on with the token.
func TestTokenRepliesCarryTheBinding(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.consent("alerts")
	want := token.Binding{SMTPAddr: e.fake.SMTPAddr(), CAFile: e.fake.CAFile(), ClientID: "client-alerts"}
	if rec := e.record("alerts"); rec.Binding != want {
		t.Fatalf("consent sealed binding %+v, want %+v", rec.Binding, want)
	}

	msg := rawRequest(t, e.conn("raw"), SubjectGet, Request{Account: "alerts"})
	var body map[string]any
	if err := json.Unmarshal(msg.Data, &body); err != nil {
		t.Fatal(err)
	}
	if body["smtp_addr"] != want.SMTPAddr || body["ca_file"] != want.CAFile || body["client_id"] != want.ClientID {
		t.Fatalf("token.get reply %v lacks the binding %+v", keys(body), want)
	}

	c := e.client()
	tok, err := c.Token(e.ctx, "alerts")
	if err != nil || tok.Binding != want {
		t.Fatalf("token.get through the client: binding %+v (%v), want %+v", tok.Binding, err, want)
	}
	e.clock.Advance(time.Minute)
	tok, err = c.ForceRefresh(e.ctx, "alerts")
	if err != nil || tok.Binding != want {
		t.Fatalf("token.refresh: binding %+v (%v), want %+v", tok.Binding, err, want)
	}
	// A rewritten account record changes nothing the service answers.
	a, err := e.reg.Get(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	a.SMTPAddr = "mx.attacker.example:587"
	if err := e.reg.Put(e.ctx, a); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	if tok, err = c.ForceRefresh(e.ctx, "alerts"); err != nil || tok.Binding != want {
		t.Fatalf("after a rewrite: binding %+v (%v), want still %+v", tok.Binding, err, want)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A token service of an earlier version answers without a binding; its
// replies still decode, as an unbound token (which a worker does not
// check, and warns about).
func TestReplyOfAnEarlierVersionDecodes(t *testing.T) {
	e := newEnv(t)
	old := e.conn("old-service")
	expiry := e.clock.Now().Add(time.Hour).UTC()
	sub, err := old.Subscribe(SubjectGet, func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"account":"alerts","mailbox":"alerts@contoso.com","access_token":"AT-old","expiry":"` +
			expiry.Format(time.RFC3339) + `","issued":"` + e.clock.Now().UTC().Format(time.RFC3339) + `"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	// The client asks on another connection: only once the server has the
	// subscription does the request find a responder.
	if err := old.Flush(); err != nil {
		t.Fatal(err)
	}
	tok, err := e.client().Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token != "AT-old" || tok.Mailbox != "alerts@contoso.com" || !tok.Expiry.Equal(expiry) || tok.Binding.Bound() {
		t.Fatalf("old reply decoded as %v, binding %+v", tok, tok.Binding)
	}
}

// The upgrade: records stored by an earlier version have no binding. A
// token service binds each to the account record as it finds it when it
// starts (trust on first use), without waiting for mail or a refresh, and
// logs it; the tokens are kept, nobody signs in again.
func TestReplicaBindsRecordsOfAnEarlierVersionAtStart(t *testing.T) {
	e := newEnv(t)
	e.consent("legacy")
	rec := e.record("legacy")
	rec.Binding, rec.ProxyURL = token.Binding{}, ""
	if _, err := e.store.Put(e.ctx, rec); err != nil { // as an earlier version stored it
		t.Fatal(err)
	}
	a, err := e.reg.Get(e.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}

	e.replica("r1")
	e.eventually("the record bound", func() bool { return e.record("legacy").Binding.Bound() })
	got := e.record("legacy")
	if got.Binding != token.BindingOf(a) || got.RefreshToken != rec.RefreshToken || got.AccessToken != rec.AccessToken || !got.LastRefresh.Equal(rec.LastRefresh) {
		t.Fatalf("bound record %v, binding %+v: want the account's binding and the tokens kept", got, got.Binding)
	}
	// bind logs after its write of the bound record: wait for the line.
	e.eventually("the binding to be logged (trust on first use)", func() bool { return strings.Contains(e.logs.String(), "trust on first use") })
	tok, err := e.client().Token(e.ctx, "legacy")
	if err != nil || tok.Binding != token.BindingOf(a) || tok.Token != rec.AccessToken {
		t.Fatalf("token.get after the upgrade: %v binding %+v (%v)", tok, tok.Binding, err)
	}
	if err := tok.Binding.Check(a); err != nil {
		t.Fatalf("the account fails its own binding: %v", err)
	}
}

// Reload bypasses the client's cache: a consent that bound new values
// since the token was cached is seen at once.
func TestClientReloadSeesANewBinding(t *testing.T) {
	e := newEnv(t)
	e.replica("r1")
	e.consent("alerts")
	c := e.client()
	old, err := c.Token(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	rec := e.record("alerts")
	rec.Binding.SMTPAddr = "smtp.contoso.com:587"
	if _, err := e.store.Put(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	if cached, err := c.Token(e.ctx, "alerts"); err != nil || cached.Binding != old.Binding {
		t.Fatalf("Token: binding %+v (%v), want the cached %+v", cached.Binding, err, old.Binding)
	}
	fresh, err := c.Reload(e.ctx, "alerts")
	if err != nil || fresh.Binding != rec.Binding {
		t.Fatalf("Reload: binding %+v (%v), want the stored %+v", fresh.Binding, err, rec.Binding)
	}
	if again, err := c.Token(e.ctx, "alerts"); err != nil || again.Binding != rec.Binding {
		t.Fatalf("Token after Reload: binding %+v (%v), want the stored %+v", again.Binding, err, rec.Binding)
	}
}
