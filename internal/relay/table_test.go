package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/relay"
	"relay365/internal/submit"
)

func reply(code, class, subj, detail int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subj, detail}, Message: text}
}

// The actions of docs/office365.md §4, as a test observes them.
const (
	actRefresh    = "refresh the token once, then retry the session"
	actRetry      = "retry with backoff"
	actReconnect  = "reconnect and authenticate, retry"
	actAgain      = "send once more at once on another connection"
	actThrottle   = "back off with one connection fewer"
	actPause      = "pause the account until a probe succeeds"
	actTenant     = "pause every account of the tenant"
	actSender     = "pause this account, not the others of its tenant"
	actRewrite    = "rewrite From per policy"
	actDeadLetter = "dead-letter with the reply"
)

// TestOffice365RepliesEndToEnd is docs/office365.md §4 row by row, through the
// engine against the fake: each reply is produced by the fake (its own
// switches where it has them, an injected reply at the stage Office 365
// gives it otherwise) and the test checks the action the relay took.
func TestOffice365RepliesEndToEnd(t *testing.T) {
	h := newHarness(t, setup{
		// A short DATA timeout for the "timeout" row.
		transport: &submit.Transport{DataTimeout: time.Second},
	})
	type row struct {
		reply  string
		act    string
		class  relay.Class
		inject func(a account.Account) // nil: the row's message itself provokes it
		clear  func(a account.Account) // for switches that stay on
		msg    func(a account.Account, subj string) (from string, policy message.FromPolicy)
	}
	auth := func(r *smtp.SMTPError, n int) func(account.Account) {
		return func(account.Account) { h.fake.SetNextAuthReply(n, r) }
	}
	data := func(r *smtp.SMTPError) func(account.Account) {
		return func(account.Account) { h.fake.SetNextDataReply(1, r) }
	}
	rows := []row{
		{reply: "535 5.7.3", act: actRefresh, inject: auth(reply(535, 5, 7, 3, "Authentication unsuccessful [host]"), 1)},
		{reply: "535 5.7.3 after the refresh", act: actPause, class: submit.ClassAuth, inject: auth(reply(535, 5, 7, 3, "Authentication unsuccessful [host]"), 2)},
		{reply: "535 5.7.139", act: actPause, class: submit.ClassConfig,
			inject: func(a account.Account) { h.fake.DisableSMTPAuth(a.Tenant, true) },
			clear:  func(a account.Account) { h.fake.DisableSMTPAuth(a.Tenant, false) }},
		{reply: "504 5.7.4", act: actPause, class: submit.ClassConfig, inject: auth(reply(504, 5, 7, 4, "Unrecognized authentication type"), 1)},
		{reply: "501 5.5.124", act: actPause, class: submit.ClassConfig, inject: auth(reply(501, 5, 5, 124, "Invalid XOAUTH2 client response."), 1)},
		{reply: "530 5.7.57", act: actAgain, class: submit.ClassSession,
			inject: func(account.Account) {
				h.fake.SetNextMailReply(1, reply(530, 5, 7, 57, "Client not authenticated to send mail."))
			}},
		{reply: "421 4.7.66", act: actPause, class: submit.ClassConfig, inject: auth(reply(421, 4, 7, 66, "TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2."), 1)},
		{reply: "432 4.3.2", act: actThrottle, class: submit.ClassThrottle, inject: data(reply(432, 4, 3, 2, "STOREDRV.ClientSubmit; sender thread limit exceeded"))},
		{reply: "554 5.2.0 SubmissionQuotaExceeded", act: actPause, class: submit.ClassQuota,
			inject: func(a account.Account) { h.fake.SetQuotaExceeded(a.Mailbox, true) },
			clear:  func(a account.Account) { h.fake.SetQuotaExceeded(a.Mailbox, false) }},
		{reply: "550 5.1.90", act: actPause, class: submit.ClassQuota, inject: data(reply(550, 5, 1, 90, "Your message can't be sent because you've reached your daily limit for message recipients"))},
		{reply: "554 5.2.2", act: actPause, class: submit.ClassAccount, inject: data(reply(554, 5, 2, 2, "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException"))},
		{reply: "550 5.7.60 (policy rewrite)", act: actRewrite,
			msg: func(a account.Account, subj string) (string, message.FromPolicy) {
				return "Ops <noreply@contoso.com>", message.PolicyRewrite
			}},
		{reply: "550 5.7.60 (policy allow, no SendAs)", act: actDeadLetter, class: submit.ClassMessage,
			msg: func(a account.Account, subj string) (string, message.FromPolicy) {
				return "Ops <noreply@contoso.com>", message.PolicyAllow
			}},
		{reply: "554 5.2.252", act: actDeadLetter, class: submit.ClassMessage, inject: data(reply(554, 5, 2, 252, "SendAsDenied; alerts@contoso.com not allowed to send as noreply@contoso.com"))},
		{reply: "550 5.7.708", act: actTenant, class: submit.ClassTenant, inject: data(reply(550, 5, 7, 708, "Service unavailable. Access denied, traffic not accepted from this IP."))},
		{reply: "550 5.7.705", act: actPause, class: submit.ClassTenant, inject: data(reply(550, 5, 7, 705, "Access denied, tenant has exceeded threshold."))},
		{reply: "550 5.7.750", act: actPause, class: submit.ClassTenant, inject: data(reply(550, 5, 7, 750, "Service unavailable. Client blocked from sending from unregistered domains."))},
		{reply: "550 5.7.233", act: actTenant, class: submit.ClassTenant, inject: data(reply(550, 5, 7, 233, "Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)"))},
		{reply: "550 5.1.8", act: actSender, class: submit.ClassAccount, inject: data(reply(550, 5, 1, 8, "Access denied, bad outbound sender."))},
		{reply: "550 5.7.501", act: actPause, class: submit.ClassAccount, inject: data(reply(550, 5, 7, 501, "Access denied, spam abuse detected."))},
		{reply: "554 5.2.0 OutboundSpamException", act: actPause, class: submit.ClassAccount, inject: data(reply(554, 5, 2, 0, "STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message WASCL UserAction verdict is not None."))},
		{reply: "451 4.7.0", act: actRetry, class: submit.ClassTransient, inject: func(account.Account) { h.fake.FailNextData(1) }},
		{reply: "451 4.3.111", act: actRetry, class: submit.ClassTransient, inject: data(reply(451, 4, 3, 111, "Temporary server error"))},
		{reply: "421 (other)", act: actAgain, class: submit.ClassTransient, inject: data(reply(421, 4, 3, 2, "Service not available, closing transmission channel"))},
		{reply: "connection reset", act: actRetry, class: submit.ClassTransient, inject: func(account.Account) { h.fake.DropNextData(1) }},
		{reply: "timeout", act: actRetry, class: submit.ClassTransient, inject: func(account.Account) { h.fake.DelayNextData(1, 3*time.Second) }},
		{reply: "552 5.3.4", act: actDeadLetter, class: submit.ClassMessage, inject: data(reply(552, 5, 3, 4, "Message size exceeds fixed maximum message size"))},
		{reply: "552", act: actDeadLetter, class: submit.ClassMessage,
			inject: func(account.Account) {
				h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 552, EnhancedCode: smtp.NoEnhancedCode, Message: "Requested mail action aborted: exceeded storage allocation"})
			}},
		{reply: "other 5xx: 550 5.1.10", act: actDeadLetter, class: submit.ClassMessage, inject: data(reply(550, 5, 1, 10, "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"))},
		{reply: "other 4xx: 450 4.2.1", act: actRetry, class: submit.ClassTransient, inject: data(reply(450, 4, 2, 1, "The recipient has exceeded their limit, try again later"))},
	}
	for i, r := range rows {
		t.Run(r.reply, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			h.t, h.ctx = t, ctx
			alias := fmt.Sprintf("row%d", i)
			mailbox := alias + "@contoso.com"
			tenant := alias + ".onmicrosoft.com"
			var from string
			policy := message.PolicyRewrite
			subj := "row " + r.reply
			if r.msg != nil {
				from, policy = r.msg(account.Account{}, subj)
			}
			a := h.enroll(alias, mailbox, tenant, func(a *account.Account) {
				a.FromPolicy = policy
				if policy == message.PolicyAllow {
					a.SendAs = []string{"noreply@contoso.com"} // allowed by the relay, not by Exchange
				}
			})
			var sibling, stranger account.Account
			if r.act == actTenant || r.act == actSender {
				sibling = h.enroll(alias+"-sib", alias+"-sib@contoso.com", tenant, nil)
				stranger = h.enroll(alias+"-other", alias+"-other@contoso.com", "elsewhere.onmicrosoft.com", nil)
			}
			refreshes := h.fake.TokenCalls(fakeo365.GrantRefreshToken)
			if r.inject != nil {
				r.inject(a)
			}
			m := msgFor(alias, "id-"+alias, subj)
			m.From = from
			h.publishMsg(m)

			switch r.act {
			case actDeadLetter:
				h.waitFor("the dead letter", func() bool { return len(h.deadLetters(alias)) == 1 })
				dl := h.deadLetters(alias)[0]
				wantReply := lastReplyOf(r.reply)
				if dl.Class != string(r.class) || dl.ID != "id-"+alias || dl.Attempts != 1 || dl.OrigSubject != "mail.send."+alias ||
					!strings.Contains(dl.LastReply, wantReply) || !strings.Contains(dl.Reason, dl.LastReply) {
					t.Fatalf("dead letter %+v, want class %s with the reply %s", dl, r.class, wantReply)
				}
				if n := h.delivered()[subj]; n != 0 {
					t.Fatalf("dead-lettered message also delivered %d times", n)
				}
				return
			case actPause, actTenant, actSender:
				h.waitFor("the pause", func() bool {
					return h.metric("relay_account_pauses_total", "account", alias, "class", string(r.class)) >= 1
				})
				if r.act == actTenant {
					// The sibling pauses (pauseTenant) after the account
					// counted its own pause: wait for its count.
					h.waitFor("the other account of the blocked tenant to pause", func() bool {
						return h.metric("relay_account_pauses_total", "account", sibling.Alias, "class", string(submit.ClassTenant)) >= 1
					})
					if h.metric("relay_account_pauses_total", "account", sibling.Alias, "class", string(submit.ClassTenant)) != 1 {
						t.Fatal("the other account of the blocked tenant was not paused")
					}
					if h.metric("relay_account_pauses_total", "account", stranger.Alias) != 0 {
						t.Fatal("an account of another tenant was paused")
					}
				}
				if r.clear != nil {
					r.clear(a)
				}
			}
			h.waitFor("delivery", func() bool { return h.delivered()[subj] >= 1 })
			h.waitFor("the account to settle", func() bool { return h.queued() == 0 && !h.lane(alias).Paused })
			if n := h.delivered()[subj]; n != 1 && r.reply != "timeout" {
				// A timeout after DATA is the one ambiguous case: the slow
				// server may still accept the first copy.
				t.Fatalf("delivered %d times", n)
			}
			if n := h.outcome(alias, "dead_lettered"); n != 0 {
				t.Fatalf("%v dead letters", n)
			}
			pauses := h.metric("relay_account_pauses_total", "account", alias)
			switch r.act {
			case actRefresh:
				if got := h.fake.TokenCalls(fakeo365.GrantRefreshToken) - refreshes; got != 1 {
					t.Fatalf("%d refreshes, want exactly one forced refresh", got)
				}
				if pauses != 0 || h.outcome(alias, "retried") != 0 {
					t.Fatal("the one refresh happens inside the attempt: no pause, no retry")
				}
			case actPause, actTenant, actSender:
				if r.act == actSender && h.metric("relay_account_pauses_total", "account", sibling.Alias) != 0 {
					// Checked once the account has paused and resumed:
					// a tenant pause would have been counted by now.
					t.Fatal("a restricted sender paused the other accounts of its tenant")
				}
				if r.class == submit.ClassAuth {
					if got := h.fake.TokenCalls(fakeo365.GrantRefreshToken) - refreshes; got != 1 {
						t.Fatalf("%d refreshes, want one (then hold the account)", got)
					}
				}
				if h.outcome(alias, "paused") < 1 || h.outcome(alias, "retried") != 0 {
					t.Fatalf("outcomes: paused %v retried %v", h.outcome(alias, "paused"), h.outcome(alias, "retried"))
				}
			case actAgain:
				if pauses != 0 || h.outcome(alias, "retried") != 0 {
					t.Fatalf("pauses %v retried %v, want none: sent again within the attempt", pauses, h.outcome(alias, "retried"))
				}
				if got := h.metric("relay_smtp_replies_total", "account", alias, "class", string(r.class)); got != 1 {
					t.Fatalf("relay_smtp_replies_total{class=%s} = %v", r.class, got)
				}
			case actRetry, actReconnect, actThrottle:
				if pauses != 0 || h.outcome(alias, "retried") != 1 {
					t.Fatalf("pauses %v retried %v, want 0 and 1", pauses, h.outcome(alias, "retried"))
				}
				if got := h.metric("relay_smtp_replies_total", "account", alias, "class", string(r.class)); got != 1 {
					t.Fatalf("relay_smtp_replies_total{class=%s} = %v", r.class, got)
				}
			}
			switch r.act {
			case actReconnect, actAgain:
				if n := h.metric("relay_smtp_connections_total", "account", alias); n != 2 {
					t.Fatalf("%v sessions opened, want a new one after 530", n)
				}
			case actThrottle:
				if l := h.lane(alias); l.ConnLimit != a.MaxConns-1 {
					t.Fatalf("connection limit %d after 432, want %d", l.ConnLimit, a.MaxConns-1)
				}
			case actRewrite:
				got := capturedBySubject(t, h.fake, subj)
				if got.Header.Get("From") != `"Ops" <`+mailbox+`>` || got.Header.Get("Reply-To") != `"Ops" <noreply@contoso.com>` {
					t.Fatalf("From %q Reply-To %q", got.Header.Get("From"), got.Header.Get("Reply-To"))
				}
			}
		})
	}
}

func capturedBySubject(t *testing.T, fake *fakeo365.Server, subj string) *mail.Message {
	t.Helper()
	for _, m := range fake.Messages() {
		if m.Subject == subj {
			parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
			if err != nil {
				t.Fatal(err)
			}
			return parsed
		}
	}
	t.Fatalf("no message %q captured", subj)
	return nil
}

// lastReplyOf picks the reply code out of a row name such as
// "other 5xx: 550 5.1.10" or "550 5.7.60 (policy allow, no SendAs)".
func lastReplyOf(name string) string {
	var parts []string
	for _, f := range strings.Fields(name) {
		if _, err := strconv.Atoi(strings.ReplaceAll(f, ".", "")); err == nil {
			parts = append(parts, f)
		}
	}
	return strings.Join(parts, " ")
}
