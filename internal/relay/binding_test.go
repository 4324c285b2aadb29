package relay_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// A rewritten account record must not send a live token anywhere else:
// the account's smtp_addr and ca_file are pointed at a second SMTP server
// (the attacker's, whose CA the rewritten record trusts), as anyone who
// may write relay_accounts could. The worker compares the record with the
// binding sealed with the tokens, opens no connection at all, pauses the
// account with class config, logs and counts it; the message stays
// queued. Restoring the record lets the mail flow again.
func TestRewrittenAccountRecordGetsNoToken(t *testing.T) {
	h := newHarness(t, setup{})
	orig := h.enroll("bound", "bound@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("bound", "before-1", "before the rewrite")
	h.waitFor("the first message delivered", func() bool { return h.delivered()["before the rewrite"] == 1 })

	attacker, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { attacker.Close() })

	evil := orig
	evil.SMTPAddr, evil.CAFile = attacker.SMTPAddr(), attacker.CAFile()
	if err := h.accounts.Put(h.ctx, evil); err != nil { // as an admin would
		t.Fatal(err)
	}
	h.waitFor("the lane to take the rewritten record", func() bool {
		return h.engine.LaneAccount("bound").SMTPAddr == attacker.SMTPAddr()
	})
	h.publish("bound", "after-1", "after the rewrite")
	h.waitFor("the account paused with class config", func() bool {
		l := h.lane("bound")
		return l.Paused && l.PauseClass == string(submit.ClassConfig)
	})
	l := h.lane("bound")
	for _, want := range []string{"smtp_addr", "ca_file", attacker.SMTPAddr(), orig.SMTPAddr} {
		if !strings.Contains(l.PauseReason, want) {
			t.Errorf("the pause reason does not name %q: %s", want, l.PauseReason)
		}
	}
	if strings.Contains(l.PauseReason, "client_id") {
		t.Errorf("the pause reason names client_id, which did not change: %s", l.PauseReason)
	}
	if n := h.metric("relay_account_binding_mismatch_total", "account", "bound"); n < 1 {
		t.Errorf("relay_account_binding_mismatch_total{account=bound} = %v, want at least 1", n)
	}
	if !h.loggedError("bound", "smtp_addr") {
		t.Error("no error-level log line with account=bound naming smtp_addr")
	}
	if c, m, r := attacker.Connections(), attacker.Messages(), attacker.Replies(); c != 0 || len(m) != 0 || len(r) != 0 {
		t.Fatalf("the rewritten endpoint was reached: %d connections, %d messages, replies %v", c, len(m), r)
	}
	if q := h.queued(); q != 1 {
		t.Errorf("%d messages in MAIL, want the one waiting", q)
	}
	if dl := h.deadLetters("bound"); len(dl) != 0 {
		t.Errorf("%d dead letters; a binding mismatch never dead-letters", len(dl))
	}
	if h.delivered()["after the rewrite"] != 0 {
		t.Error("the message was delivered through the rewritten record")
	}

	// The record restored, the account sends again.
	if err := h.accounts.Put(h.ctx, orig); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the waiting message delivered", func() bool {
		return h.delivered()["after the rewrite"] == 1 && h.queued() == 0
	})
	h.waitFor("the account resumed", func() bool { return !h.lane("bound").Paused })
	if c := attacker.Connections(); c != 0 {
		t.Errorf("the rewritten endpoint was reached %d times", c)
	}
}

// loggedError reports whether an error-level JSON log line carries
// account=alias and mentions what.
func (h *harness) loggedError(alias, what string) bool {
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		if ev["level"] == "error" && ev["account"] == alias && strings.Contains(line, what) {
			return true
		}
	}
	return false
}

// Connecting an account again with another SMTP endpoint is how a
// binding is changed on purpose: the worker, which still holds a cached
// token bound to the old endpoint, asks the token service again instead
// of calling the new record a mismatch, and the mail goes to the new
// endpoint without a pause or a count.
func TestReconnectWithAnotherEndpointIsNoMismatch(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("moving", "moving@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("moving", "first", "to the first endpoint")
	h.waitFor("the first message delivered", func() bool { return h.delivered()["to the first endpoint"] == 1 })

	next, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	a := next.Account("moving", "moving@contoso.com", "contoso.onmicrosoft.com")
	a.PerMinute, a.PerDay = 1<<20, 1<<24
	if err := relaytestEnroll(h, a); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the lane to take the new record", func() bool {
		return h.engine.LaneAccount("moving").SMTPAddr == next.SMTPAddr()
	})
	h.publish("moving", "second", "to the second endpoint")
	h.waitFor("the second message delivered at the new endpoint", func() bool {
		for _, m := range next.Messages() {
			if m.Subject == "to the second endpoint" {
				return true
			}
		}
		return false
	})
	if n := h.metric("relay_account_binding_mismatch_total", "account", "moving"); n != 0 {
		t.Errorf("relay_account_binding_mismatch_total{account=moving} = %v after an intended change, want 0", n)
	}
	if p := h.metric("relay_account_pauses_total", "account", "moving"); p != 0 {
		t.Errorf("%v pauses after an intended change, want 0", p)
	}
}

// Consent writes the token record, then the account record. A worker that
// meets the new token before the new account (no token cached, or one
// asked for again) waits a moment for the account record instead of
// calling it a mismatch.
func TestTokenWrittenBeforeAccountIsNoMismatch(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("window", "window@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("window", "first", "to the first endpoint")
	h.waitFor("the first message delivered", func() bool { return h.delivered()["to the first endpoint"] == 1 })

	next, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	a := next.Account("window", "window@contoso.com", "contoso.onmicrosoft.com")
	a.PerMinute, a.PerDay = 1<<20, 1<<24
	a.Normalize()
	authURL, tokenURL, _ := a.Endpoints()
	tok, err := consent.Browser{ClientID: a.ClientID, AuthURL: authURL, TokenURL: tokenURL, Scopes: a.Scopes, LoginHint: a.Mailbox}.
		Run(h.ctx, consent.FollowURL(h.ctx))
	if err != nil {
		t.Fatal(err)
	}
	// Consent's first write: the tokens, bound to the new endpoint.
	if _, err := h.store.Put(h.ctx, token.Record{
		Account: "window", RefreshToken: tok.RefreshToken, AccessToken: tok.AccessToken, Expiry: time.Now().Add(token.Lifetime(tok)),
		Scopes: a.Scopes, TokenURL: tokenURL, LastRefresh: time.Now(), State: token.StateHealthy, Binding: token.BindingOf(a),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.tokens.Reload(h.ctx, "window"); err != nil { // the worker holds the new token
		t.Fatal(err)
	}
	h.publish("window", "second", "to the second endpoint")
	h.waitFor("the worker waiting for the account record", func() bool {
		if h.lane("window").Paused {
			t.Fatal("paused: " + h.lane("window").PauseReason)
		}
		return strings.Contains(h.logs.String(), "waiting briefly for an account write to follow")
	})
	// Consent's second write: the account.
	if err := h.accounts.Put(h.ctx, a); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the second message delivered at the new endpoint", func() bool {
		for _, m := range next.Messages() {
			if m.Subject == "to the second endpoint" {
				return true
			}
		}
		return false
	})
	if n := h.metric("relay_account_binding_mismatch_total", "account", "window"); n != 0 {
		t.Errorf("relay_account_binding_mismatch_total{account=window} = %v, want 0", n)
	}
	if p := h.metric("relay_account_pauses_total", "account", "window"); p != 0 {
		t.Errorf("%v pauses, want 0", p)
	}
}
