package relay_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"

	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

func TestTokenRefusedAfterForcedRefreshRaisesConsentRequired(t *testing.T) {
	// 535 5.7.3 to a token, and again to the one a forced refresh just
	// gave: no refresh will help, a person must (the signed-in user, the
	// app's SMTP.Send permission, the consent). The token service raises
	// the alarm it raises for a refresh refused for want of consent: the
	// account.consent_required event, and needs_consent in token.status
	// (and relay_token_state) with a remedy. The account pauses and, once
	// Office 365 takes the tokens again, resumes by itself.
	h := newHarness(t, setup{})
	h.enroll("refused", "refused@contoso.com", "contoso.onmicrosoft.com", nil)
	events := make(chan tokensvc.Event, 16)
	sub, err := h.js.Conn().Subscribe(tokensvc.SubjectConsentRequired, func(m *nats.Msg) {
		var ev tokensvc.Event
		if json.Unmarshal(m.Data, &ev) == nil {
			events <- ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	h.fake.SetNextAuthReply(1000, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"})
	h.publish("refused", "r-1", "refused")

	var ev tokensvc.Event
	select {
	case ev = <-events:
	case <-h.ctx.Done():
		t.Fatal("no account.consent_required event")
	}
	if ev.Account != "refused" || ev.State != string(token.StateNeedsConsent) || ev.Class != string(token.StateNeedsConsent) ||
		ev.OAuthError != token.ErrSMTPRefused || !strings.Contains(ev.Remedy, "authtool login --account refused") {
		t.Fatalf("event %+v", ev)
	}
	st, err := h.tokens.StatusOf(h.ctx, "refused")
	if err != nil || st.State != string(token.StateNeedsConsent) || !strings.Contains(st.Remedy, "535") {
		t.Fatalf("token.status %+v, %v: want needs_consent with the remedy", st, err)
	}
	h.waitFor("the pause", func() bool { return h.lane("refused").Paused })

	// Exchange takes the tokens again (a permission that reached it):
	// the probe's forced refresh and session resume the account.
	h.fake.SetNextAuthReply(0, nil)
	h.waitFor("the delivery", func() bool { return h.delivered()["refused"] == 1 && h.queued() == 0 })
	h.waitFor("a healthy state", func() bool {
		st, err := h.tokens.StatusOf(h.ctx, "refused")
		return err == nil && st.State == string(token.StateHealthy)
	})
}

func TestConsentAlarmEndsWhenAnotherRelayAuthenticates(t *testing.T) {
	// The relay that told the token service of the refused token is gone
	// (restarted, or another replica): the relay that authenticates next
	// with that very token ends the alarm, or a healthy account shows
	// needs_consent until its token is next refreshed.
	h := newHarness(t, setup{})
	h.enroll("refused", "refused@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.SetNextAuthReply(1000, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"})
	h.publish("refused", "r-2", "refused")
	h.waitFor("needs_consent", func() bool {
		st, err := h.tokens.StatusOf(h.ctx, "refused")
		return err == nil && st.State == string(token.StateNeedsConsent)
	})
	h.waitFor("the pause", func() bool { return h.lane("refused").Paused })
	h.stop()

	h.fake.SetNextAuthReply(0, nil)
	r := h.replica()
	h.waitFor("the delivery by the other relay", func() bool { return r.outcome("refused", "sent") == 1 && h.queued() == 0 })
	st, err := h.tokens.StatusOf(h.ctx, "refused")
	if err != nil || st.State != string(token.StateHealthy) {
		t.Fatalf("token.status %+v, %v after a session authenticated with the token: want healthy", st, err)
	}
}
