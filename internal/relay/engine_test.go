package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

func TestSessionsArePooledAndReauthenticated(t *testing.T) {
	// Idle sessions close after 2 s: long enough that a loaded machine's
	// slow publishes do not let a session idle out between two messages
	// (which would open a fourth connection and fail the pooling check),
	// short enough for the last check.
	h := newHarness(t, setup{engine: relay.Config{IdleTimeout: 2 * time.Second}})
	a := h.enroll("pooled", "pooled@contoso.com", "contoso.onmicrosoft.com", nil)
	base := h.fake.Connections() // the consent test mail's
	for i := range 30 {
		h.publish("pooled", fmt.Sprintf("pool-%02d", i), fmt.Sprintf("pool %02d", i))
	}
	h.waitFor("30 delivered", func() bool { return len(h.delivered()) == 30 })
	if n := h.fake.Connections() - base; n < 1 || n > a.MaxConns {
		t.Fatalf("30 messages over %d connections, want at most %d (pooled)", n, a.MaxConns)
	}
	// A new access token: sessions authenticated with the old one are not
	// reused (XOAUTH2 cannot re-authenticate), new ones are opened.
	before := h.fake.Connections()
	if _, err := h.tokens.ForceRefresh(h.ctx, "pooled"); err != nil {
		t.Fatal(err)
	}
	h.publish("pooled", "after-refresh", "after refresh")
	h.waitFor("delivery with the new token", func() bool { return h.delivered()["after refresh"] == 1 })
	if h.fake.Connections() == before {
		t.Fatal("a session authenticated with the old token was reused")
	}
	// Idle sessions are closed.
	h.waitFor("idle sessions to close", func() bool { return h.fake.OpenConns() == 0 })
	if s := h.lane("pooled").Sessions; s != 0 {
		t.Fatalf("the pool still counts %d sessions", s)
	}
}

func TestIdleClosedSessionIsReplacedWithoutRetry(t *testing.T) {
	// Office 365 closes a silent session ("421 4.4.2 ... timeout"); the
	// pool still holds it. The next message finds it dead before the
	// server took any of it and goes at once on a new session: no retry,
	// no delay, no second copy. The pool keeps sessions for a minute,
	// the fake only for half a second.
	h := newHarness(t, setup{
		fake:   fakeo365.Config{IdleTimeout: 500 * time.Millisecond},
		engine: relay.Config{IdleTimeout: time.Minute},
	})
	a := h.enroll("idle", "idle@contoso.com", "contoso.onmicrosoft.com", nil)
	// Slow first messages make the lane open all its sessions, so the
	// pool ends up holding several dead ones.
	h.fake.DelayNextData(a.MaxConns, 300*time.Millisecond)
	for i := range a.MaxConns {
		h.publish("idle", fmt.Sprintf("idle-%d", i), fmt.Sprintf("first %d", i))
	}
	h.waitFor("the first messages", func() bool { return len(h.delivered()) == a.MaxConns })
	h.waitFor("the fake to close the idle sessions", func() bool { return h.fake.OpenConns() == 0 })
	if s := h.lane("idle").Sessions; s != a.MaxConns {
		t.Fatalf("the pool holds %d sessions, want the %d the fake closed", s, a.MaxConns)
	}
	before := h.fake.Connections()
	h.publish("idle", "idle-next", "next")
	h.waitFor("the next message", func() bool { return h.delivered()["next"] == 1 })
	if n := h.outcome("idle", "retried"); n != 0 {
		t.Fatalf("%v retries, want none: dead pooled sessions are passed over at once", n)
	}
	if n := h.fake.Connections() - before; n != 1 {
		t.Fatalf("%d new connections for the next message, want 1", n)
	}
	for subject, n := range h.delivered() {
		if n != 1 {
			t.Fatalf("%q delivered %d times, want once", subject, n)
		}
	}
	// The fake offers PIPELINING, as Office 365 does, and the sessions use it.
	if !strings.Contains(h.logs.String(), `"pipelining":true`) {
		t.Fatal("sessions did not pipeline against a server offering PIPELINING")
	}
}

func TestRedeliveredSentMessageIsAckedNotSent(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("once", "once@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("once", "alert-1", "only once")
	h.waitFor("delivery", func() bool { return h.delivered()["only once"] == 1 })
	h.waitFor("the ack", func() bool { return h.queued() == 0 })
	// The same message again, past JetStream's dedupe (another
	// Nats-Msg-Id): as after a lost ack, or a crash after the marker.
	b, _ := msgFor("once", "alert-1", "only once").Encode()
	if _, err := h.js.PublishMsg(h.ctx, &nats.Msg{Subject: queue.Subject("once"), Data: b, Header: nats.Header{jetstream.MsgIDHeader: {"alert-1-redelivered"}}}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the duplicate to be acked", func() bool { return h.outcome("once", "duplicate") == 1 })
	if n := h.delivered()["only once"]; n != 1 {
		t.Fatalf("delivered %d times", n)
	}
	// Its log lines name the message once, by the JSON's id, though the
	// stream message's Nats-Msg-Id differs: a JSON object with msg_id
	// twice is read as the last by some tools and refused by others.
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if n := strings.Count(line, `"msg_id":`); n > 1 {
			t.Fatalf("a log line with %d msg_id keys: %s", n, line)
		}
	}
	// finish counts the outcome before it acks: wait for the ack.
	h.waitFor("the duplicate's ack (the duplicate was not acked)", func() bool { return h.queued() == 0 })
	// The duplicate's pacing reservation, made beside the marker lookup,
	// was given back: the record counts the one message sent.
	if msgs, rcpts := h.paced("once=contoso.com"); msgs != 1 || rcpts != 1 {
		t.Fatalf("pacing counts %d messages and %d recipients, want 1 and 1", msgs, rcpts)
	}
	// A copy that says it was sent before (a replay or requeue carries
	// the id along) looks at the markers first and reserves nothing, not
	// even for a moment: a reservation near the daily limit could make
	// other messages see the budget spent and pause the account.
	rev := h.pacingRevision("once=contoso.com")
	if _, err := h.js.PublishMsg(h.ctx, &nats.Msg{Subject: queue.Subject("once"), Data: b, Header: nats.Header{
		jetstream.MsgIDHeader: {"alert-1-replayed"}, queue.HdrMessageID: {"alert-1"},
	}}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the replayed copy to be acked", func() bool { return h.outcome("once", "duplicate") == 2 })
	if got := h.pacingRevision("once=contoso.com"); got != rev {
		t.Fatalf("the pacing record was written for a copy already sent (revision %d → %d)", rev, got)
	}
}

func TestManyRecipientsGoInBatches(t *testing.T) {
	h := newHarness(t, setup{fake: fakeo365.Config{PerMinute: -1}})
	a := h.enroll("bulk", "bulk@contoso.com", "contoso.onmicrosoft.com", nil)
	rcpts := make([]string, 1201)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("user%04d@fabrikam.com", i)
	}
	m := &message.Message{ID: "bulk-1", Account: "bulk", Bcc: rcpts, Subject: "to everyone", Text: "x"}
	base := len(h.fake.Messages())
	// The second transaction fails once (451); the retry must send the
	// second and third, not the first again.
	h.fake.DelayNextData(2, 300*time.Millisecond)
	h.publishMsg(m)
	if _, err := h.fake.WaitMessages(h.ctx, base+1); err != nil {
		t.Fatal(err)
	}
	h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary server error"})
	h.waitFor("all batches", func() bool { return h.queued() == 0 && h.delivered()["to everyone"] >= 3 })
	var sizes []int
	seen := map[string]int{}
	ids := map[string]bool{}
	for _, c := range h.fake.Messages() {
		if c.Subject != "to everyone" {
			continue
		}
		sizes = append(sizes, len(c.To))
		for _, r := range c.To {
			seen[r]++
		}
		parsed, _ := mail.ReadMessage(bytes.NewReader(c.Data))
		ids[parsed.Header.Get("Message-Id")] = true
	}
	slices.Sort(sizes)
	if fmt.Sprint(sizes) != "[201 500 500]" {
		t.Fatalf("transactions of %v recipients, want 500, 500, 201 (each once)", sizes)
	}
	for _, r := range rcpts {
		if seen[r] != 1 {
			t.Fatalf("%s got the message %d times", r, seen[r])
		}
	}
	if len(ids) != 1 || !ids[message.MessageID("bulk", "bulk-1", a.Mailbox)] {
		t.Fatalf("Message-IDs %v, want the one stable id", ids)
	}
	if h.outcome("bulk", "retried") != 1 || h.outcome("bulk", "sent") != 1 {
		t.Fatalf("retried %v sent %v", h.outcome("bulk", "retried"), h.outcome("bulk", "sent"))
	}
	// The retry found batch 0 marked: the reservation made for it beside
	// the lookups was given back, as was the refused one's; the record
	// counts the three accepted transactions and nothing else.
	if msgs, n := h.paced("bulk=contoso.com"); msgs != 3 || n != len(rcpts) {
		t.Fatalf("pacing counts %d messages and %d recipients, want 3 and %d", msgs, n, len(rcpts))
	}
}

func TestUnknownAccountsAreSwept(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{UnknownGrace: 1500 * time.Millisecond}})
	// Published a moment before its account exists: within the grace,
	// so it is delivered once the account arrives.
	h.publish("late", "late-1", "late account")
	h.enroll("late", "late@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("ghost", "ghost-1", "nobody")
	b, _ := msgFor("x", "odd-1", "odd").Encode()
	if _, err := h.js.PublishMsg(h.ctx, &nats.Msg{Subject: "mail.send.not.an.alias", Data: b}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the late account's message", func() bool { return h.delivered()["late account"] == 1 })
	h.waitFor("the unknown accounts' mail to leave MAIL", func() bool { return h.queued() == 0 })
	for _, c := range []struct{ dlqAccount, id, reason string }{
		{"ghost", "ghost-1", `invalid message: account: unknown account "ghost" (add it with authtool login)`},
		{"unknown", "seq-3-", `unknown account "not.an.alias"`},
	} {
		dl := h.deadLetters(c.dlqAccount)
		if len(dl) != 1 || dl[0].ID != c.id && !(strings.HasSuffix(c.id, "-") && strings.HasPrefix(dl[0].ID, c.id)) || !strings.Contains(dl[0].Reason, c.reason) || dl[0].Class != "invalid" {
			t.Fatalf("dead letters of %s: %+v", c.dlqAccount, dl)
		}
	}
	// The sweeper counts a dead letter after MoveToDLQ terminated the
	// original, so after it left MAIL: wait for the count.
	h.waitFor("the sweeper to count both dead letters", func() bool { return h.outcome("unknown", "dead_lettered") >= 2 })
	if h.outcome("unknown", "dead_lettered") != 2 {
		t.Fatalf("metric: %v", h.outcome("unknown", "dead_lettered"))
	}

	// A removed account: its lane and consumer go, its new mail is swept.
	if err := h.accounts.Delete(h.ctx, "late"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the consumer to go", func() bool {
		_, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.AccountConsumer("late"))
		return err != nil
	})
	h.publish("late", "late-2", "after removal")
	h.waitFor("the removed account's mail to be swept", func() bool { return len(h.deadLetters("late")) == 1 })
}

func TestPausedAccountNeverDeadLettersAtLastDelivery(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
	a := h.enroll("quota", "quota@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.SetQuotaExceeded(a.Mailbox, true)
	h.publish("quota", "q-1", "over quota")
	h.waitFor("a requeue", func() bool { return h.outcome("quota", "requeued") >= 1 })
	h.fake.SetQuotaExceeded(a.Mailbox, false)
	h.waitFor("delivery", func() bool { return h.delivered()["over quota"] == 1 && h.queued() == 0 })
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

func TestPartlySentMessageKeepsItsSplitWhenPerDayChanges(t *testing.T) {
	// per_day 300: 600 recipients go as two batches of 300, and the
	// second does not fit the day. The operator raises per_day to 10,000
	// (authtool login --per-day), which would split them 500 + 100: the
	// message must keep the split its first batch was sent with, so each
	// recipient gets it once (batch 0's marker once covered recipients
	// 0-499, and 300-499 never got it).
	h := newHarness(t, setup{fake: fakeo365.Config{PerMinute: -1, PerDay: -1}})
	h.enroll("bulk", "bulk@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.PerDay = 300 })
	rcpts := make([]string, 600)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("user%04d@fabrikam.com", i)
	}
	h.publishMsg(&message.Message{ID: "bulk-1", Account: "bulk", Bcc: rcpts, Subject: "to everyone", Text: "x"})
	h.waitFor("the first batch and the day's pause", func() bool { return h.delivered()["to everyone"] == 1 && h.lane("bulk").Paused })
	a, err := h.accounts.Get(h.ctx, "bulk")
	if err != nil {
		t.Fatal(err)
	}
	a.PerDay = 10000
	if err := h.accounts.Put(h.ctx, a); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the message to leave MAIL", func() bool { return h.queued() == 0 })
	var sizes []int
	seen := map[string]int{}
	for _, c := range h.fake.Messages() {
		if c.Subject == "to everyone" {
			sizes = append(sizes, len(c.To))
			for _, r := range c.To {
				seen[r]++
			}
		}
	}
	if fmt.Sprint(sizes) != "[300 300]" {
		t.Errorf("transactions of %v recipients, want 300 and 300", sizes)
	}
	for _, r := range rcpts {
		if seen[r] != 1 {
			t.Fatalf("%s got the message %d times, want once", r, seen[r])
		}
	}
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

func TestPartlySentMessageOverALoweredPerDayIsDeadLettered(t *testing.T) {
	// A message partly sent in batches of 300 (batch 0 of 2 marked), and
	// per_day lowered to 200 since: its rest keeps the 300 split (no
	// recipient may get it twice), which can never fit a day's budget.
	// It is dead-lettered saying what to raise, instead of pausing the
	// account for a whole day again and again.
	h := newHarness(t, setup{fake: fakeo365.Config{PerMinute: -1, PerDay: -1}})
	h.enroll("bulk", "bulk@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.PerDay = 200 })
	sent, err := relay.OpenSentMarkers(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	if err := sent.Mark(h.ctx, "bulk", "bulk-2", 0, 2, 300, time.Now()); err != nil {
		t.Fatal(err)
	}
	rcpts := make([]string, 600)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("user%04d@fabrikam.com", i)
	}
	h.publishMsg(&message.Message{ID: "bulk-2", Account: "bulk", Bcc: rcpts, Subject: "to everyone", Text: "x"})
	h.waitFor("the dead letter", func() bool { return len(h.deadLetters("bulk")) == 1 && h.queued() == 0 })
	dl := h.deadLetters("bulk")[0]
	for _, want := range []string{"batches of 300", "per_day of 200", "at least 300"} {
		if !strings.Contains(dl.Reason, want) || dl.Class != "invalid" {
			t.Fatalf("dead letter %q (class %s): want class invalid and %q", dl.Reason, dl.Class, want)
		}
	}
	if n := h.delivered()["to everyone"]; n != 0 {
		t.Fatalf("sent %d transactions of the rest, want none", n)
	}
}

// republish queues m under another Nats-Msg-Id: the same message id
// published again after MAIL's 24-hour duplicate window.
func republish(t *testing.T, h *harness, m *message.Message) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: queue.Subject(m.Account), Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, m.ID+"-after-the-window")
	if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
		t.Fatal(err)
	}
}

func TestSameIDWithOtherRecipientsIsADuplicate(t *testing.T) {
	// An id published again within the markers' 7 days is not sent again
	// (docs/design.md §7.10), whatever its recipients: batch 0's marker
	// does not look like another split of this message, so the message
	// keeps its own split and is acked as a duplicate (it was once
	// re-split by the marker's count and dead-lettered).
	for _, n := range []int{2, 30} {
		t.Run(fmt.Sprint(n, " recipients"), func(t *testing.T) {
			h := newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
			h.enroll("reuse", "reuse@contoso.com", "contoso.onmicrosoft.com", nil)
			h.publishMsg(&message.Message{ID: "weekly", Account: "reuse", To: []string{"a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com"}, Subject: "first", Text: "x"})
			h.waitFor("the first sent", func() bool { return h.delivered()["first"] == 1 && h.queued() == 0 })
			var to []string
			for i := range n {
				to = append(to, fmt.Sprintf("r%02d@fabrikam.com", i))
			}
			republish(t, h, &message.Message{ID: "weekly", Account: "reuse", To: to, Subject: "second", Text: "y"})
			h.waitFor("the second to leave MAIL", func() bool { return h.queued() == 0 })
			if dl := h.deadLetters(""); len(dl) != 0 {
				t.Fatalf("dead-lettered %q, want acked as a duplicate", dl[0].Reason)
			}
			if sent := h.delivered()["second"]; sent != 0 || h.outcome("reuse", "duplicate") != 1 {
				t.Fatalf("sent %d times, %v duplicates; want none sent, one duplicate", sent, h.outcome("reuse", "duplicate"))
			}
		})
	}
}

func TestAuthRequiredAtAuthPausesTheAccount(t *testing.T) {
	// A 530 to AUTH itself is about the account (docs/office365.md §4: any
	// 5xx before a message is named pauses), not a session to open again:
	// the account pauses and the message waits, never dead-lettered.
	h := newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
	h.enroll("a530", "a530@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.SetNextAuthReply(1000, &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"})
	h.publish("a530", "m-1", "five-thirty")
	h.waitFor("the pause", func() bool { return h.lane("a530").Paused })
	h.fake.SetNextAuthReply(0, nil)
	h.waitFor("delivery after the probe", func() bool { return h.delivered()["five-thirty"] == 1 && h.queued() == 0 })
	if dl := h.deadLetters("a530"); len(dl) != 0 {
		t.Fatalf("dead-lettered: %s", dl[0].Reason)
	}
}

// refuseStream makes stream refuse new messages (full, discard new)
// until the returned restore is called: a store whose disk or limits are
// spent.
func refuseStream(t *testing.T, h *harness, stream string) (restore func()) {
	t.Helper()
	s, err := h.js.Stream(h.ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	orig := s.CachedInfo().Config
	if s.CachedInfo().State.Msgs == 0 {
		// MaxMsgs 0 is "no limit": hold one message to be full at one.
		if _, err := h.js.Publish(h.ctx, queue.DLQPrefix+"filler", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	full := orig
	full.MaxMsgs, full.Discard = int64(max(1, s.CachedInfo().State.Msgs)), jetstream.DiscardNew
	if _, err := h.js.UpdateStream(h.ctx, full); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := h.js.UpdateStream(h.ctx, orig); err != nil {
			t.Fatal(err)
		}
	}
}

// deliveries is how many times the account's consumer has delivered
// messages, redeliveries included.
func deliveries(t *testing.T, h *harness, alias string) uint64 {
	t.Helper()
	c, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.AccountConsumer(alias))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.Delivered.Consumer
}

// doomedBehindAFullDLQ queues message "doomed" of account alerts
// (MaxDeliver 2), which every MAIL FROM refuses for good (550 5.7.1), while
// MAIL_DLQ refuses its dead letter until restore.
func doomedBehindAFullDLQ(t *testing.T) (h *harness, restore func()) {
	h = newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	restore = refuseStream(t, h, queue.StreamDLQ)
	h.fake.SetNextMailReply(1000, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "refused"})
	h.publish("alerts", "m-1", "doomed")
	return h, restore
}

func TestDeadLetterRefusedAtLastDeliveryIsTriedAgain(t *testing.T) {
	// MAIL_DLQ refuses the copy at the message's last delivery (MaxDeliver
	// 2). With the limit on the server the message was never delivered
	// again and stayed in MAIL unseen; it must be delivered again, and
	// dead-lettered once the DLQ takes it.
	h, restore := doomedBehindAFullDLQ(t)
	h.waitFor("a delivery past the last", func() bool { return h.fake.Replies()["550 5.7.1"] >= 3 })
	restore()
	h.waitFor("the dead letter", func() bool { return len(h.deadLetters("alerts")) == 1 && h.queued() == 0 })
	if n := h.delivered()["doomed"]; n != 0 {
		t.Fatalf("sent %d times", n)
	}
}

func TestMessageDeliveredTwiceMaxDeliverIsDeadLetteredUntried(t *testing.T) {
	// Every delivery ends without an outcome (here its dead letter is
	// refused each time): from twice MaxDeliver on the message is no
	// longer tried, and it is dead-lettered as soon as the DLQ takes it,
	// saying why.
	h, restore := doomedBehindAFullDLQ(t)
	h.waitFor("five deliveries", func() bool { return deliveries(t, h, "alerts") >= 5 })
	restore()
	h.waitFor("the dead letter", func() bool { return len(h.deadLetters("alerts")) == 1 && h.queued() == 0 })
	if tried := h.fake.Replies()["550 5.7.1"]; tried != 3 {
		t.Errorf("tried %d times over SMTP, want 3: deliveries from the 4th (twice MaxDeliver) on are not tried", tried)
	}
	dl := h.deadLetters("alerts")[0]
	if !strings.Contains(dl.Reason, "twice --max-deliver") || !strings.Contains(dl.Reason, "550 5.7.1") || !strings.Contains(dl.Reason, "dead letter was refused") {
		t.Errorf("dead letter reason %q: want the bound, the last reply and why it stayed", dl.Reason)
	}
}

func TestRequeueRefusedAtLastDeliveryIsTriedAgain(t *testing.T) {
	// A paused account's message at its last delivery is requeued; MAIL
	// refuses the copy. It must be delivered again (not stranded) and
	// sent when the account can send, never dead-lettered.
	h := newHarness(t, setup{engine: relay.Config{MaxDeliver: 2}})
	a := h.enroll("quota", "quota@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.SetQuotaExceeded(a.Mailbox, true)
	h.publish("quota", "q-1", "over quota")
	h.waitFor("the last delivery", func() bool { return deliveries(t, h, "quota") >= 1 })
	restore := refuseStream(t, h, queue.StreamMail)
	h.waitFor("deliveries past the last", func() bool { return deliveries(t, h, "quota") >= 3 })
	restore()
	h.fake.SetQuotaExceeded(a.Mailbox, false)
	h.waitFor("delivery", func() bool { return h.delivered()["over quota"] == 1 && h.queued() == 0 })
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

func TestThrottledMailboxUsesFewerConnections(t *testing.T) {
	// Exchange allows this mailbox one connection; the account says 3.
	h := newHarness(t, setup{fake: fakeo365.Config{MaxConns: 1, PerMinute: -1}})
	h.enroll("narrow", "narrow@contoso.com", "contoso.onmicrosoft.com", nil)
	for i := range 30 {
		h.publish("narrow", fmt.Sprintf("n-%02d", i), fmt.Sprintf("narrow %02d", i))
	}
	h.waitFor("delivery", func() bool { return h.queued() == 0 })
	for subj, n := range h.delivered() {
		if n != 1 {
			t.Fatalf("%s delivered %d times", subj, n)
		}
	}
	if len(h.delivered()) != 30 || len(h.deadLetters("")) != 0 {
		t.Fatalf("%d delivered, %d dead letters", len(h.delivered()), len(h.deadLetters("")))
	}
	if h.fake.Replies()["432 4.3.2"] == 0 {
		t.Fatal("the fake never refused a connection; the test proves nothing")
	}
	if l := h.lane("narrow"); l.ConnLimit != 1 {
		t.Fatalf("connection limit %d, want 1", l.ConnLimit)
	}
}

func TestDeadLetterReplayDelivers(t *testing.T) {
	h := newHarness(t, setup{})
	a := h.enroll("sendas", "sendas@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.FromPolicy, a.SendAs = message.PolicyAllow, []string{"noreply@contoso.com"}
	})
	m := msgFor("sendas", "replay-me", "replayed")
	m.From = "noreply@contoso.com"
	h.publishMsg(m)
	h.waitFor("the dead letter", func() bool { return len(h.deadLetters("sendas")) == 1 })
	dl := h.deadLetters("sendas")[0]
	if !strings.HasPrefix(dl.LastReply, "550 5.7.60") {
		t.Fatalf("dead letter %+v", dl)
	}
	// The admin grants SendAs; the operator replays.
	h.fake.SetSendAs(a.Mailbox, "noreply@contoso.com")
	res, err := queue.ReplayDeadLetter(h.ctx, h.js, dl.Seq)
	if err != nil || res.Duplicate {
		t.Fatal(res, err)
	}
	h.waitFor("the replay's delivery", func() bool { return h.delivered()["replayed"] == 1 && h.queued() == 0 })
	if left := h.deadLetters(""); len(left) != 0 {
		t.Fatalf("dead letters after the replay: %+v", left)
	}
	got := capturedBySubject(t, h.fake, "replayed")
	if got.Header.Get("Message-Id") != message.MessageID("sendas", "replay-me", a.Mailbox) || got.Header.Get("From") != "<noreply@contoso.com>" {
		t.Fatalf("replayed message headers %v", got.Header)
	}
}

func TestLegacyConsumerIsReplaced(t *testing.T) {
	h := newHarness(t, setup{beforeStart: func(ctx context.Context, js jetstream.JetStream) {
		if _, err := js.CreateOrUpdateConsumer(ctx, queue.StreamMail, jetstream.ConsumerConfig{
			Durable: queue.LegacyConsumer, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: queue.SubjectPrefix + ">",
		}); err != nil {
			t.Fatal(err)
		}
	}})
	if _, err := h.js.Consumer(h.ctx, queue.StreamMail, queue.LegacyConsumer); err == nil {
		t.Fatal("the catch-all consumer of the earlier version is still there")
	}
	h.enroll("upgraded", "upgraded@contoso.com", "contoso.onmicrosoft.com", nil)
	h.publish("upgraded", "u-1", "after upgrade")
	h.waitFor("delivery", func() bool { return h.delivered()["after upgrade"] == 1 })
}

// TestSlowServerDoesNotCauseRedelivery: a transaction that outlasts
// AckWait is kept by InProgress heartbeats, so JetStream does not hand the
// message to another attempt that would send it again.
func TestSlowServerDoesNotCauseRedelivery(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{AckWait: time.Second}})
	h.enroll("slow", "slow@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.DelayNextData(1, 2500*time.Millisecond)
	h.publish("slow", "slow-1", "slow server")
	h.waitFor("delivery and ack", func() bool { return h.delivered()["slow server"] == 1 && h.queued() == 0 })
	if n := h.outcome("slow", "sent"); n != 1 || h.outcome("slow", "duplicate") != 0 {
		t.Fatalf("sent %v duplicate %v: the message was redelivered during the slow send", n, h.outcome("slow", "duplicate"))
	}
}

// TestUnknownJSONFieldsAreDeliveredAndCounted: a message from a producer
// on a newer schema (or with a field of its own, or a typo) is delivered,
// not dead-lettered; each unknown field is counted and each name logged
// once per account.
func TestUnknownJSONFieldsAreDeliveredAndCounted(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("newer", "newer@contoso.com", "contoso.onmicrosoft.com", nil)
	for i := range 3 {
		body := fmt.Sprintf(`{"id":"u-%d","account":"newer","to":["ops@fabrikam.com"],"subject":"schema %d","text":"x","priority":"high","subjet":"typo"}`, i, i)
		if _, err := queue.Publish(h.ctx, h.js, "newer", fmt.Sprintf("u-%d", i), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("all three delivered", func() bool { return h.delivered()["schema 0"]+h.delivered()["schema 1"]+h.delivered()["schema 2"] == 3 })
	if n := len(h.deadLetters("newer")); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
	if n := h.metric("relay_message_unknown_fields_total", "account", "newer"); n != 6 {
		t.Fatalf("relay_message_unknown_fields_total = %v, want 6 (2 fields × 3 messages)", n)
	}
	if c := strings.Count(h.logs.String(), "JSON fields the relay does not know"); c != 1 || !strings.Contains(h.logs.String(), `"fields":["priority","subjet"]`) {
		t.Fatalf("the unknown names were logged %d times (want once, naming both):\n%s", c, h.logs.String())
	}
}

// TestLaneGauges: relay_lanes and relay_lanes_bound count the engine's
// lanes and those whose consumer is bound, one series each without an
// account label (`relay bench --accounts` reads "every lane bound" from
// them), and follow accounts as they come and go.
func TestLaneGauges(t *testing.T) {
	h := newHarness(t, setup{manualStart: true})
	enrol := consent.Enroller{Accounts: h.accounts, Store: h.store, SkipTestMail: true}
	aliases := []string{"one", "two", "three"}
	for _, alias := range aliases {
		a := h.fake.Account(alias, alias+"@contoso.com", "contoso.onmicrosoft.com")
		if err := enrol.SignIn(h.ctx, a, consent.FollowURL(h.ctx)); err != nil {
			t.Fatal(err)
		}
	}
	// The engine has not started: accounts, but no lane yet.
	if lanes, bound := h.metric("relay_lanes"), h.metric("relay_lanes_bound"); lanes != 0 || bound != 0 {
		t.Fatalf("before start: relay_lanes %v relay_lanes_bound %v, want 0 0", lanes, bound)
	}
	h.start()
	for _, alias := range aliases {
		if err := h.engine.WaitBound(h.ctx, alias); err != nil {
			t.Fatal(err)
		}
	}
	if lanes, bound := h.metric("relay_lanes"), h.metric("relay_lanes_bound"); lanes != 3 || bound != 3 {
		t.Fatalf("every lane bound: relay_lanes %v relay_lanes_bound %v, want 3 3", lanes, bound)
	}
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if name := f.GetName(); name == "relay_lanes" || name == "relay_lanes_bound" {
			if len(f.GetMetric()) != 1 || len(f.GetMetric()[0].GetLabel()) != 0 {
				t.Errorf("%s: %d series, labels %v; want one series without labels", name, len(f.GetMetric()), f.GetMetric()[0].GetLabel())
			}
		}
	}
	// A removed account's lane goes, and with it its count.
	if err := h.accounts.Delete(h.ctx, "two"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the removed account's lane to go", func() bool { return h.metric("relay_lanes") == 2 })
	if bound := h.metric("relay_lanes_bound"); bound != 2 {
		t.Fatalf("after removing an account: relay_lanes_bound %v, want 2", bound)
	}
}

func TestRecipientLimitBelowOffice365sSplitsTheMessage(t *testing.T) {
	// A tenant whose recipient limit is below Office 365's 500 answers
	// 452 4.5.3 past it. The relay learns the limit from the recipients
	// accepted before that reply and sends the message again at once in
	// batches that fit, each recipient once; the next message is split
	// that way from the start. It once retried the same batch until the
	// message was dead-lettered hours later.
	h := newHarness(t, setup{fake: fakeo365.Config{MaxRecipients: 3}})
	h.enroll("small", "small@contoso.com", "contoso.onmicrosoft.com", nil)
	var to []string
	for i := range 7 {
		to = append(to, fmt.Sprintf("r%d@fabrikam.com", i))
	}
	h.publishMsg(&message.Message{ID: "seven-1", Account: "small", To: to, Subject: "seven 1", Text: "x"})
	h.waitFor("the first message sent", func() bool { return h.delivered()["seven 1"] == 3 && h.queued() == 0 })
	refused := h.fake.Replies()["452 4.5.3"]
	if refused == 0 {
		t.Fatal("no 452 4.5.3: the limit was not reached")
	}
	if got := h.lane("small").RcptLimit; got != 3 {
		t.Fatalf("status shows a recipient limit of %d, want 3", got)
	}
	h.publishMsg(&message.Message{ID: "seven-2", Account: "small", To: to, Subject: "seven 2", Text: "x"})
	h.waitFor("the second message sent", func() bool { return h.delivered()["seven 2"] == 3 && h.queued() == 0 })
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Fatalf("dead-lettered %q", dl[0].Reason)
	}
	for _, subject := range []string{"seven 1", "seven 2"} {
		got := map[string]int{}
		var sizes []int
		for _, m := range h.fake.Messages() {
			if m.Subject == subject {
				sizes = append(sizes, len(m.To))
				for _, r := range m.To {
					got[r]++
				}
			}
		}
		slices.Sort(sizes)
		if len(got) != len(to) || !slices.Equal(sizes, []int{1, 3, 3}) {
			t.Fatalf("%s: transactions of %v recipients reaching %v; want 3, 3 and 1 reaching all 7", subject, sizes, got)
		}
		for r, n := range got {
			if n != 1 {
				t.Fatalf("%s: %s got it %d times", subject, r, n)
			}
		}
	}
	if n := h.fake.Replies()["452 4.5.3"]; n != refused {
		t.Fatalf("%d more replies 452 4.5.3 for the second message, want none: it is split from the start", n-refused)
	}
}

func TestPartlySentOverTheServersRecipientLimitIsDeadLettered(t *testing.T) {
	// A message partly sent in batches of 5 (batch 0 of 2 marked), and
	// the server now takes 3 recipients a message: the rest keeps the
	// split of 5 (no recipient may get it twice), which the server would
	// refuse again and again. It is dead-lettered saying what to raise.
	h := newHarness(t, setup{fake: fakeo365.Config{MaxRecipients: 3}})
	h.enroll("split", "split@contoso.com", "contoso.onmicrosoft.com", nil)
	sent, err := relay.OpenSentMarkers(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	if err := sent.Mark(h.ctx, "split", "ten", 0, 2, 5, time.Now()); err != nil {
		t.Fatal(err)
	}
	var to []string
	for i := range 10 {
		to = append(to, fmt.Sprintf("r%d@fabrikam.com", i))
	}
	h.publishMsg(&message.Message{ID: "ten", Account: "split", To: to, Subject: "ten", Text: "x"})
	h.waitFor("the dead letter", func() bool { return len(h.deadLetters("split")) == 1 && h.queued() == 0 })
	dl := h.deadLetters("split")[0]
	for _, want := range []string{"batches of 5", "only 3", "452 4.5.3", "at least 5"} {
		if !strings.Contains(dl.Reason, want) || dl.Class != "invalid" {
			t.Fatalf("dead letter %q (class %s): want class invalid and %q", dl.Reason, dl.Class, want)
		}
	}
	if n := h.delivered()["ten"]; n != 0 {
		t.Fatalf("sent %d transactions of the rest, want none", n)
	}
}

func TestDateIsWhenQueued(t *testing.T) {
	// A message without a Date field is dated when it was queued (its
	// Relay-Queued header, which a requeue keeps), not when it leaves:
	// after an hour's pause its Date was an hour late. JSON and raw alike.
	h := newHarness(t, setup{})
	h.enroll("dated", "dated@contoso.com", "contoso.onmicrosoft.com", nil)
	queued := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, m := range []*message.Message{
		{ID: "dated-json", Account: "dated", To: []string{"ops@fabrikam.com"}, Subject: "json", Text: "x"},
		{ID: "dated-raw", Account: "dated", To: []string{"ops@fabrikam.com"}, Raw: []byte("From: dated@contoso.com\r\nTo: ops@fabrikam.com\r\nSubject: raw\r\n\r\nx\r\n")},
	} {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		// A requeued copy, as queue.Requeue publishes it.
		msg := &nats.Msg{Subject: queue.Subject(m.Account), Data: b, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, m.ID+":requeue:1")
		msg.Header.Set(queue.HdrMessageID, m.ID)
		msg.Header.Set(queue.HdrQueued, queued.UTC().Format(time.RFC3339Nano))
		if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("both sent", func() bool { return h.delivered()["json"] == 1 && h.delivered()["raw"] == 1 })
	for _, m := range h.fake.Messages() {
		if m.Subject != "json" && m.Subject != "raw" {
			continue
		}
		pm, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		got, err := pm.Header.Date()
		if err != nil || !got.Equal(queued) {
			t.Errorf("%s: Date %q (%v), want the time it was queued, %s", m.Subject, pm.Header.Get("Date"), err, queued.Format(time.RFC1123Z))
		}
	}
}
