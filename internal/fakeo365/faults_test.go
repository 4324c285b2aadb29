package fakeo365

import (
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestInjectedReplies(t *testing.T) {
	s := startServer(t, Config{})
	token := delegatedToken(t, s, testMailbox)

	// AUTH: the injected reply replaces the token check, once.
	s.SetNextAuthReply(1, smtpError(504, 5, 7, 4, "Unrecognized authentication type"))
	c := dialTLS(t, s)
	wantSMTPError(t, c.Auth(&xoauth2Client{user: testMailbox, token: token}), 504, smtp.EnhancedCode{5, 7, 4})
	c = authedClient(t, s, testMailbox, token)

	// MAIL FROM, once; the session still works afterwards.
	s.SetNextMailReply(1, replyNotAuthenticated)
	wantSMTPError(t, send(c, testMailbox), 530, smtp.EnhancedCode{5, 7, 57})
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	// End of DATA, twice.
	s.SetNextDataReply(2, smtpError(554, 5, 2, 2, "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException"))
	for range 2 {
		wantSMTPError(t, send(c, testMailbox), 554, smtp.EnhancedCode{5, 2, 2})
	}
	if err := send(c, testMailbox); err != nil {
		t.Fatalf("after the injected replies: %v", err)
	}
	want := map[string]int{"504 5.7.4": 1, "530 5.7.57": 1, "554 5.2.2": 2}
	if got := s.Replies(); !equalCounts(got, want) {
		t.Errorf("Replies = %v, want %v", got, want)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

func TestDelayNextData(t *testing.T) {
	s := startServer(t, Config{})
	c := authedClient(t, s, testMailbox, delegatedToken(t, s, testMailbox))
	s.DelayNextData(1, 300*time.Millisecond)
	c.SubmissionTimeout = 50 * time.Millisecond
	err := send(c, testMailbox)
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("want a timeout without reply, got %v", err)
	}
	// The slow server still accepts the message it was given: a client
	// that times out cannot know whether it went.
	if _, err := s.WaitMessages(testContext(t), 1); err != nil {
		t.Fatal(err)
	}
}

func TestSetRandomFaults(t *testing.T) {
	s := startServer(t, Config{PerMinute: -1})
	token := delegatedToken(t, s, testMailbox)
	run := func() (fails, drops int) {
		s.SetRandomFaults(42, 0.3, 0.1)
		defer s.SetRandomFaults(0, 0, 0)
		var c *smtp.Client
		for range 200 {
			if c == nil {
				c = authedClient(t, s, testMailbox, token)
			}
			err := send(c, testMailbox)
			var se *smtp.SMTPError
			switch {
			case err == nil:
			case errors.As(err, &se) && se.Code == 451:
				fails++
				if err := c.Reset(); err != nil {
					t.Fatal(err)
				}
			default:
				drops++
				c = nil
			}
		}
		return fails, drops
	}
	f1, d1 := run()
	f2, d2 := run()
	if f1 != f2 || d1 != d2 {
		t.Errorf("same seed, different faults: %d/%d vs %d/%d", f1, d1, f2, d2)
	}
	// 200 draws at 30 % and 10 %: far from zero and far from all.
	if f1 < 20 || f1 > 100 || d1 < 5 || d1 > 50 {
		t.Errorf("fails %d drops %d out of 200", f1, d1)
	}
}

func TestRevokeMailbox(t *testing.T) {
	s := startServer(t, Config{})
	conf := oauthConfig(s, smtpScope, "offline_access")
	revoked := signIn(t, conf, testMailbox)
	other := signIn(t, conf, "ops@contoso.com")
	open := authedClient(t, s, testMailbox, revoked.AccessToken)
	s.RevokeMailbox(testMailbox)
	if err := open.Noop(); err == nil {
		t.Error("an authenticated connection of the revoked mailbox is still usable")
	}

	c := dialTLS(t, s)
	wantSMTPError(t, c.Auth(&xoauth2Client{user: testMailbox, token: revoked.AccessToken}), 535, smtp.EnhancedCode{5, 7, 3})
	_, err := refresh(testContext(t), conf, revoked.RefreshToken)
	wantOAuthError(t, err, 400, "invalid_grant", 50173)

	authedClient(t, s, "ops@contoso.com", other.AccessToken)
	if _, err := refresh(testContext(t), conf, other.RefreshToken); err != nil {
		t.Errorf("another mailbox's refresh token: %v", err)
	}
	// A new consent works again.
	fresh := signIn(t, conf, testMailbox)
	authedClient(t, s, testMailbox, fresh.AccessToken)
}

func TestConnectionsCounted(t *testing.T) {
	s := startServer(t, Config{})
	if n := s.Connections(); n != 0 {
		t.Fatalf("Connections = %d before any", n)
	}
	for range 3 {
		c := dialTLS(t, s)
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Connections(); n != 3 {
		t.Errorf("Connections = %d, want 3", n)
	}
}
