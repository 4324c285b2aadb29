package relay_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// noSuchUser is the reply Exchange gives a recipient it refuses outright.
var noSuchUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "RESOLVER.ADR.RecipNotFound; not found"}

// toOf is the envelope recipients of the captured messages with subject.
func toOf(h *harness, subject string) [][]string {
	var out [][]string
	for _, m := range h.fake.Messages() {
		if m.Subject == subject {
			out = append(out, m.To)
		}
	}
	return out
}

func TestRecipientRefusedAtRcptIsDeadLetteredAlone(t *testing.T) {
	// RFC 5321 §3.3: a server that refuses one recipient (550 5.1.1) and
	// accepts the others delivers to those. The message goes to the
	// accepted recipients and is acked; a dead letter holds it for the
	// refused one only, naming the address and the reply, and its replay
	// (once the mailbox exists) goes to that recipient alone.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.RefuseRecipient("gone@fabrikam.com", noSuchUser)
	h.publishMsg(&message.Message{ID: "part-1", Account: "alerts", To: []string{"ops@fabrikam.com", "gone@fabrikam.com"},
		Cc: []string{"dev@fabrikam.com"}, Subject: "partly", Text: "body"})
	h.waitFor("the message acked and a dead letter", func() bool {
		return h.queued() == 0 && len(h.deadLetters("alerts")) == 1
	})
	if got := toOf(h, "partly"); len(got) != 1 || !slices.Equal(got[0], []string{"ops@fabrikam.com", "dev@fabrikam.com"}) {
		t.Fatalf("delivered to %v, want once to the two accepted recipients", got)
	}
	dl := h.deadLetters("alerts")[0]
	if !strings.Contains(dl.Reason, "gone@fabrikam.com: 550 5.1.1") || strings.Contains(dl.Reason, "ops@fabrikam.com") {
		t.Errorf("dead letter reason %q: want the refused address and its reply, and no other", dl.Reason)
	}
	if dl.Class != "message" || !strings.HasPrefix(dl.LastReply, "550 5.1.1") || dl.ID != "part-1" {
		t.Errorf("dead letter %+v", dl)
	}
	if rc, err := queue.ParseRecipients(dl.Header); err != nil || !slices.Equal(rc, []string{"gone@fabrikam.com"}) {
		t.Fatalf("dead letter recipients %v, %v", rc, err)
	}
	if n := h.outcome("alerts", "sent"); n != 1 {
		t.Errorf("sent outcome %v, want 1", n)
	}

	// The mailbox is made; the operator replays.
	h.fake.RefuseRecipient("gone@fabrikam.com", nil)
	if res, err := queue.ReplayDeadLetter(h.ctx, h.js, dl.Seq); err != nil || res.Duplicate {
		t.Fatal(res, err)
	}
	h.waitFor("the replay's delivery", func() bool { return len(toOf(h, "partly")) == 2 && h.queued() == 0 })
	if got := toOf(h, "partly")[1]; !slices.Equal(got, []string{"gone@fabrikam.com"}) {
		t.Fatalf("replay delivered to %v, want the refused recipient only", got)
	}
	if left := h.deadLetters(""); len(left) != 0 {
		t.Fatalf("dead letters after the replay: %+v", left)
	}
}

func TestEveryRecipientRefusedDeadLettersTheMessage(t *testing.T) {
	// With no recipient accepted nothing is sent, and the message itself
	// is dead-lettered, as before: its replay goes to all of them.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.RefuseRecipient("ops@fabrikam.com", noSuchUser)
	h.publish("alerts", "all-gone", "nobody")
	h.waitFor("the dead letter", func() bool { return h.queued() == 0 && len(h.deadLetters("alerts")) == 1 })
	dl := h.deadLetters("alerts")[0]
	if rc, _ := queue.ParseRecipients(dl.Header); rc != nil || !strings.HasPrefix(dl.LastReply, "550 5.1.1") {
		t.Fatalf("dead letter %+v (recipients %v)", dl, rc)
	}
	if n := len(toOf(h, "nobody")); n != 0 {
		t.Fatalf("sent %d times", n)
	}
}

func TestRefusedRecipientsDeadLetterRefusedIsStoredAtRedelivery(t *testing.T) {
	// MAIL_DLQ refuses the dead letter of the refused recipient: the
	// message, sent to the others and marked, stays queued; its
	// redelivery sends nothing again and, from the marker, stores the
	// dead letter once MAIL_DLQ takes it.
	h := sentWhileDLQRefused(t, "part-2", "held")
	if got := toOf(h, "held"); len(got) != 1 || !slices.Equal(got[0], []string{"ops@fabrikam.com"}) {
		t.Fatalf("delivered to %v, want once to the accepted recipient", got)
	}
	if rc, _ := queue.ParseRecipients(h.deadLetters("alerts")[0].Header); !slices.Equal(rc, []string{"gone@fabrikam.com"}) {
		t.Fatalf("dead letter recipients %v", rc)
	}
}

func TestSendAsRefusalDeadLetterSaysWhatToDo(t *testing.T) {
	// Exchange refuses a From the mailbox may not send as with 550 5.7.60,
	// or with 554 5.2.0 STOREDRV's SendAsDeniedException: the dead
	// letter's reason carries the remedy (grant SendAs, or the rewrite
	// policy), not only the reply.
	for _, tt := range []struct {
		name  string
		reply *smtp.SMTPError // injected at the end of DATA; nil: the fake's own 550 5.7.60
	}{
		{"5.7.60", nil},
		{"SendAsDeniedException", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message."}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, setup{})
			h.enroll("sendas", "sendas@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
				a.FromPolicy, a.SendAs = message.PolicyAllow, []string{"noreply@contoso.com"}
			})
			if tt.reply != nil {
				h.fake.SetSendAs("sendas@contoso.com", "noreply@contoso.com")
				h.fake.SetNextDataReply(1, tt.reply)
			}
			m := msgFor("sendas", "sendas-1", "send-as")
			m.From = "noreply@contoso.com"
			h.publishMsg(m)
			h.waitFor("the dead letter", func() bool { return len(h.deadLetters("sendas")) == 1 })
			dl := h.deadLetters("sendas")[0]
			if !strings.Contains(dl.Reason, "remedy:") || !strings.Contains(dl.Reason, "Add-RecipientPermission") ||
				!strings.Contains(dl.Reason, "-Trustee sendas@contoso.com") || !strings.Contains(dl.Reason, "--from-policy rewrite") {
				t.Fatalf("dead letter reason %q: want the send-as remedy", dl.Reason)
			}
		})
	}
}

// mailboxBusy is a temporary refusal of one recipient.
var mailboxBusy = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "The recipient has exceeded their limit, try again later"}

func TestRecipientRefusedForNowGetsACopyOfItsOwn(t *testing.T) {
	// A 450 to one RCPT while the others are accepted: the message goes to
	// the accepted ones and is acked, and a copy for the refused one is
	// queued (its own markers, so not a duplicate of the original) and
	// retried until the recipient takes it. Nobody gets it twice, and
	// nothing is dead-lettered.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.RefuseRecipient("busy@fabrikam.com", mailboxBusy)
	h.publishMsg(&message.Message{ID: "later-1", Account: "alerts", To: []string{"ops@fabrikam.com", "busy@fabrikam.com"}, Subject: "later", Text: "body"})
	h.waitFor("the delivery to the accepted recipient", func() bool { return len(toOf(h, "later")) == 1 })
	if got := toOf(h, "later")[0]; !slices.Equal(got, []string{"ops@fabrikam.com"}) {
		t.Fatalf("delivered to %v, want the accepted recipient", got)
	}
	h.waitFor("the copy retried", func() bool { return h.fake.Replies()["450 4.2.1"] >= 2 })
	h.fake.RefuseRecipient("busy@fabrikam.com", nil)
	h.waitFor("the copy's delivery", func() bool { return len(toOf(h, "later")) == 2 && h.queued() == 0 })
	if got := toOf(h, "later")[1]; !slices.Equal(got, []string{"busy@fabrikam.com"}) {
		t.Fatalf("the copy went to %v, want the recipient refused for now only", got)
	}
	if dl := h.deadLetters(""); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
	// The copy is counted as outcome "deferred": "requeued" is a message
	// put back whole at its last delivery because its account cannot
	// send, which an operator reads as a pause.
	if d, r := h.outcome("alerts", "deferred"), h.outcome("alerts", "requeued"); d != 1 || r != 0 {
		t.Fatalf(`outcome "deferred" %v, "requeued" %v; want 1 and 0 for the copy`, d, r)
	}
}

func TestCopyForRecipientsRefusedForNowIsQueuedAtRedelivery(t *testing.T) {
	// MAIL refuses the copy for the recipient refused for now: the
	// original, sent to the other and marked, stays queued; its
	// redelivery sends nothing again and queues the copy from the marker.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.RefuseRecipient("busy@fabrikam.com", mailboxBusy)
	restore := refuseStream(t, h, queue.StreamMail)
	defer restore()
	h.publishMsg(&message.Message{ID: "later-2", Account: "alerts", To: []string{"ops@fabrikam.com", "busy@fabrikam.com"}, Subject: "held-later", Text: "body"})
	h.waitFor("a redelivery", func() bool { return deliveries(t, h, "alerts") >= 2 })
	h.fake.RefuseRecipient("busy@fabrikam.com", nil)
	restore()
	h.waitFor("the copy's delivery", func() bool { return len(toOf(h, "held-later")) == 2 && h.queued() == 0 })
	got := toOf(h, "held-later")
	if !slices.Equal(got[0], []string{"ops@fabrikam.com"}) || !slices.Equal(got[1], []string{"busy@fabrikam.com"}) {
		t.Fatalf("delivered to %v, want the accepted recipient once, then the copy to the other", got)
	}
}

func TestSharedBodyOfRefusedRecipientsOutlivesTheCopy(t *testing.T) {
	// A large message refused for good for one recipient and for now for
	// another: its dead letter and the copy queued for the other both
	// name the stored body. The copy's delivery must not delete the body
	// the dead letter still needs (relay dlq show, replay).
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	store, err := body.Open(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	raw := "Subject: shared body\r\nTo: ops@fabrikam.com\r\n\r\n" + strings.Repeat("line of a large body\r\n", 20000)
	ref, err := store.Put(h.ctx, strings.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	h.fake.RefuseRecipient("gone@fabrikam.com", noSuchUser)
	h.fake.RefuseRecipient("busy@fabrikam.com", mailboxBusy)
	h.publishMsg(&message.Message{ID: "shared-1", Account: "alerts", To: []string{"ops@fabrikam.com", "gone@fabrikam.com", "busy@fabrikam.com"}, Body: &ref})
	h.waitFor("the dead letter of the recipient refused for good", func() bool { return len(h.deadLetters("alerts")) == 1 })
	h.fake.RefuseRecipient("busy@fabrikam.com", nil)
	h.waitFor("the copy's delivery, done", func() bool {
		return len(toOf(h, "shared body")) == 2 && h.queued() == 0 && h.lane("alerts").InFlight == 0
	})
	rc, err := store.Open(h.ctx, ref)
	if err != nil {
		t.Fatalf("the body its dead letter names was deleted when the copy was sent: %v", err)
	}
	rc.Close()
}

func TestEveryPartOfRefusedRecipientsIsDeadLetteredWhateverTheProducersMsgID(t *testing.T) {
	// A producer's Nats-Msg-Id is not the message id when the JSON has
	// one ("short" here, validated), and nothing bounds it: a hostile or
	// careless producer sends one of 1,100 characters. Recipients refused
	// at RCPT that do not fit one Relay-Recipients header go in several
	// dead letters, "<Nats-Msg-Id>:rcpts:<part>:dlq": cut to one header
	// value's length, every part had the same Nats-Msg-Id, and MAIL_DLQ
	// dropped all but the first as duplicates, so the other refused
	// recipients were in no dead letter (nothing to see or replay).
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	to := []string{"ops@fabrikam.com"}
	for i := range 40 {
		r := fmt.Sprintf("gone-%02d-mailbox-long-name@fabrikam.com", i)
		h.fake.RefuseRecipient(r, noSuchUser)
		to = append(to, r)
	}
	b, err := json.Marshal(&message.Message{ID: "short", Account: "alerts", To: to, Subject: "many gone", Text: "body"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(h.ctx, h.js, "alerts", strings.Repeat("n", 1100), b); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the message acked", func() bool { return h.queued() == 0 && len(toOf(h, "many gone")) == 1 })
	var got []string
	for _, dl := range h.deadLetters("alerts") {
		rc, err := queue.ParseRecipients(dl.Header)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rc...)
	}
	if len(got) != 40 {
		t.Fatalf("%d of the 40 refused recipients are in a dead letter (%d dead letters)", len(got), len(h.deadLetters("alerts")))
	}
}

func TestProducersRelayRecipientsNarrowsNeverWidens(t *testing.T) {
	// Relay-Recipients is the relay's header (dead letters of refused
	// recipients, their replays, copies for recipients refused for now),
	// but a producer may set any header: a name in it that is not one of
	// the message's recipients is ignored, and a header naming none of
	// them makes the message invalid, never sent to the names it adds.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	pub := func(id, subject, rcpts string) {
		t.Helper()
		b, err := json.Marshal(&message.Message{ID: id, Account: "alerts", To: []string{"ops@fabrikam.com", "dev@fabrikam.com"}, Subject: subject, Text: "body"})
		if err != nil {
			t.Fatal(err)
		}
		m := &nats.Msg{Subject: queue.Subject("alerts"), Data: b, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, id)
		m.Header.Set(queue.HdrRecipients, rcpts)
		if _, err := h.js.PublishMsg(h.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	pub("widen", "widened", `["DEV@fabrikam.com","thief@evil.example"]`)
	pub("elsewhere", "elsewhere", `["thief@evil.example"]`)
	h.waitFor("both handled", func() bool {
		return h.queued() == 0 && len(toOf(h, "widened")) == 1 && len(h.deadLetters("alerts")) == 1
	})
	if got := toOf(h, "widened")[0]; !slices.Equal(got, []string{"dev@fabrikam.com"}) {
		t.Fatalf("delivered to %v, want the one named recipient of the message only", got)
	}
	if got := toOf(h, "elsewhere"); len(got) != 0 {
		t.Fatalf("a header naming none of the recipients delivered to %v", got)
	}
	if dl := h.deadLetters("alerts")[0]; dl.ID != "elsewhere" || dl.Class != "invalid" || !strings.Contains(dl.Reason, "names none of the message's recipients") {
		t.Fatalf("dead letter %+v", dl)
	}
	for _, m := range h.fake.Messages() {
		for _, r := range m.To {
			if strings.Contains(r, "evil.example") {
				t.Fatalf("sent to %s", r)
			}
		}
	}
}

func TestRefusedRecipientsDeadLetterCountedOnceAcrossRedeliveries(t *testing.T) {
	// One recipient refused for good, one for now, and MAIL refuses the
	// copy for the second: the dead letter of the first is stored at the
	// first attempt, and each redelivery stores it again, deduplicated
	// (queue.CopyToDLQ's Nats-Msg-Id). relay_messages_total counts one
	// dead letter, not one an attempt.
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.RefuseRecipient("gone@fabrikam.com", noSuchUser)
	h.fake.RefuseRecipient("busy@fabrikam.com", mailboxBusy)
	restore := refuseStream(t, h, queue.StreamMail)
	defer restore()
	h.publishMsg(&message.Message{ID: "count-1", Account: "alerts", To: []string{"ops@fabrikam.com", "gone@fabrikam.com", "busy@fabrikam.com"}, Subject: "counted", Text: "body"})
	h.waitFor("a second redelivery", func() bool { return deliveries(t, h, "alerts") >= 3 })
	h.fake.RefuseRecipient("busy@fabrikam.com", nil)
	restore()
	h.waitFor("the copy's delivery", func() bool { return len(toOf(h, "counted")) == 2 && h.queued() == 0 })
	if n := len(h.deadLetters("alerts")); n != 1 {
		t.Fatalf("%d dead letters, want 1", n)
	}
	if n := h.outcome("alerts", "dead_lettered"); n != 1 {
		t.Fatalf("dead_lettered outcome %v, want 1 (one dead letter stored)", n)
	}
}

func TestPartlySentMessageCountedSentWhenItsDeadLetterWaits(t *testing.T) {
	// MAIL_DLQ refuses the refused recipient's dead letter: the message
	// went to the others at the first attempt, which counts it sent
	// (design §7.6: outcomes sent and dead_lettered), though it goes back
	// to the stream for the dead letter; the redelivery that stores it is
	// a duplicate, not a second sending.
	h := sentWhileDLQRefused(t, "part-3", "held-sent")
	if got := toOf(h, "held-sent"); len(got) != 1 {
		t.Fatalf("delivered %d times, want once", len(got))
	}
	if n := h.outcome("alerts", "sent"); n != 1 {
		t.Fatalf("sent outcome %v, want 1: the message went to its accepted recipient", n)
	}
	if n := h.outcome("alerts", "dead_lettered"); n != 1 {
		t.Fatalf("dead_lettered outcome %v, want 1", n)
	}
}

// sentWhileDLQRefused sends a message to two recipients, one refused at
// RCPT for good, while MAIL_DLQ refuses the refused one's dead letter:
// the message goes to the other and stays queued; MAIL_DLQ takes new
// messages again after its redelivery, and the harness is returned once
// the dead letter is stored and MAIL is empty.
func sentWhileDLQRefused(t *testing.T, id, subject string) *harness {
	t.Helper()
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	restore := refuseStream(t, h, queue.StreamDLQ)
	h.fake.RefuseRecipient("gone@fabrikam.com", noSuchUser)
	h.publishMsg(&message.Message{ID: id, Account: "alerts", To: []string{"ops@fabrikam.com", "gone@fabrikam.com"}, Subject: subject, Text: "body"})
	h.waitFor("a redelivery", func() bool { return deliveries(t, h, "alerts") >= 2 })
	restore()
	h.waitFor("the dead letter", func() bool { return h.queued() == 0 && len(h.deadLetters("alerts")) == 1 })
	return h
}

// TestRefusedRecipientsLogLineIsBounded: the log line of a dead letter
// for recipients refused at RCPT carried every refused address with its
// reply (up to 512 bytes each), as many as fit the dead letter's
// Relay-Recipients header: tens of kilobytes in one line. It names the
// first few and counts the rest; the dead letters still name them all.
func TestRefusedRecipientsLogLineIsBounded(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	long := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "RESOLVER.ADR.RecipNotFound; " + strings.Repeat("not found ", 40)}
	var gone []string
	for i := range 40 {
		r := fmt.Sprintf("gone%02d@fabrikam.com", i)
		gone = append(gone, r)
		h.fake.RefuseRecipient(r, long)
	}
	h.publishMsg(&message.Message{ID: "many-gone", Account: "alerts", To: append([]string{"ops@fabrikam.com"}, gone...), Subject: "many gone", Text: "body"})
	h.waitFor("the message acked and its dead letters", func() bool { return h.queued() == 0 && len(h.deadLetters("alerts")) > 0 })
	var named []string
	for _, dl := range h.deadLetters("alerts") {
		rc, err := queue.ParseRecipients(dl.Header)
		if err != nil {
			t.Fatal(err)
		}
		named = append(named, rc...)
	}
	if slices.Sort(named); !slices.Equal(named, gone) {
		t.Fatalf("the dead letters name %v, want exactly %v", named, gone)
	}
	lines := 0
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var ev struct {
			Message    string `json:"message"`
			Recipients int    `json:"recipients"`
			Reason     string `json:"reason"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Message != "refused recipients dead-lettered" {
			continue
		}
		lines++
		if n := strings.Count(ev.Reason, "RecipNotFound"); n > 3 {
			t.Errorf("the log line of a dead letter for %d recipients holds %d replies (%d bytes), want at most 3", ev.Recipients, n, len(line))
		}
		if ev.Recipients > 3 && !strings.Contains(ev.Reason, fmt.Sprintf("and %d more", ev.Recipients-3)) {
			t.Errorf("the log line does not count the recipients it leaves out: %.300q", ev.Reason)
		}
	}
	if lines == 0 {
		t.Fatal("no log line for the dead letters")
	}
}
