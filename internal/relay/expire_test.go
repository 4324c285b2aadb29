package relay_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// TestExpiredMailIsDeadLetteredNotDropped: with a queue lifetime, mail
// that could not be sent in time goes to MAIL_DLQ with reason "expired
// after … undelivered" and its last failure, counted as outcome expired;
// nothing vanishes. Two ways to wait: a server that drops every
// connection (the lane keeps retrying), and an account paused for consent
// (the lane fetches nothing; the engine reads its expired mail from the
// stream).
func TestExpiredMailIsDeadLetteredNotDropped(t *testing.T) {
	const lifetime = 2 * time.Second
	t.Run("retrying", func(t *testing.T) {
		h := newHarness(t, setup{engine: relay.Config{QueueLifetime: lifetime}})
		h.enroll("down", "down@contoso.com", "contoso.onmicrosoft.com", nil)
		h.fake.DropNextData(1 << 20) // every DATA: the connection drops
		for i := range 5 {
			h.publish("down", fmt.Sprintf("r-%d", i), fmt.Sprintf("retrying %d", i))
		}
		checkExpired(t, h, "down", 5, "smtp message")
	})
	t.Run("paused", func(t *testing.T) {
		h := newHarness(t, setup{engine: relay.Config{QueueLifetime: lifetime, ExpiryEvery: 100 * time.Millisecond}})
		a := h.enroll("revoked", "revoked@contoso.com", "contoso.onmicrosoft.com", nil)
		h.fake.RevokeMailbox(a.Mailbox)
		h.publish("revoked", "p-0", "paused 0")
		h.waitFor("the account to pause", func() bool { return h.lane("revoked").Paused })
		for i := 1; i < 5; i++ {
			h.publish("revoked", fmt.Sprintf("p-%d", i), fmt.Sprintf("paused %d", i))
		}
		checkExpired(t, h, "revoked", 5, "")
	})
}

// TestLaneCountersExistAtZero: the counters alert rules take increase()
// of exist at 0 once an account's lane starts, so its first event counts
// (RelayNoSendsWhileQueued ends at the first send, RelayDLQGrowing and
// RelayMessagesExpired fire at the first dead letter).
func TestLaneCountersExistAtZero(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("quiet", "quiet@contoso.com", "contoso.onmicrosoft.com", nil)
	h.waitFor("the lane's counters", func() bool {
		_, ok := h.series("relay_account_binding_mismatch_total", "account", "quiet")
		return ok
	})
	for _, outcome := range []string{"sent", "dead_lettered", "expired"} {
		if v, ok := h.series("relay_messages_total", "account", "quiet", "outcome", outcome); !ok || v != 0 {
			t.Errorf("relay_messages_total{outcome=%q}: %v (exists %v), want 0", outcome, v, ok)
		}
	}
	if v, ok := h.series("relay_account_binding_mismatch_total", "account", "quiet"); !ok || v != 0 {
		t.Errorf("relay_account_binding_mismatch_total: %v (exists %v), want 0", v, ok)
	}
}

func checkExpired(t *testing.T, h *harness, account string, n int, lastFailure string) {
	t.Helper()
	h.waitFor("every message dead-lettered as expired", func() bool { return len(h.deadLetters(account)) == n })
	h.waitFor("MAIL empty", func() bool { return h.queued() == 0 })
	for _, d := range h.deadLetters(account) {
		if d.Class != "expired" || !strings.HasPrefix(d.Reason, "expired after 2s undelivered") || !strings.Contains(d.Reason, lastFailure) {
			t.Errorf("dead letter %s: class %q reason %q", d.ID, d.Class, d.Reason)
		}
	}
	// An expiry is counted after its copy is in MAIL_DLQ and the original
	// left MAIL (deadLetter, expirePaused): wait for the count.
	h.waitFor("the expiries counted", func() bool { return h.outcome(account, "expired") >= float64(n) })
	if got := h.outcome(account, "expired"); got != float64(n) {
		t.Fatalf("relay_messages_total{outcome=expired} = %v, want %d", got, n)
	}
	for subj := range h.delivered() {
		if strings.HasPrefix(subj, "retrying") || strings.HasPrefix(subj, "paused") {
			t.Fatalf("%q was delivered as well as expired", subj)
		}
	}
}

// TestProducersRelayQueuedIsIgnored: Relay-Queued is the relay's header,
// set on the copies it queues (a requeue keeps the first queue time). A
// producer's message that carried one, a day old, was expired at its
// first delivery without being tried, and a message without a Date was
// dated a day back. On a producer's message the header is ignored: the
// lifetime and the Date count from when MAIL stored it.
func TestProducersRelayQueuedIsIgnored(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{QueueLifetime: time.Hour}})
	h.enroll("early", "early@contoso.com", "contoso.onmicrosoft.com", nil)
	m := &message.Message{ID: "early-1", Account: "early", To: []string{"ops@fabrikam.com"}, Subject: "not expired", Text: "x"}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: queue.Subject("early"), Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	msg.Header.Set(queue.HdrQueued, time.Now().Add(-24*time.Hour).UTC().Format(time.RFC3339Nano))
	before := time.Now().Add(-time.Minute)
	if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the message sent or dead-lettered", func() bool {
		return h.delivered()["not expired"] == 1 || len(h.deadLetters("early")) > 0
	})
	if dl := h.deadLetters("early"); len(dl) > 0 {
		t.Fatalf("a producer's Relay-Queued a day back: dead-lettered, %q", dl[0].Reason)
	}
	for _, c := range h.fake.Messages() {
		if c.Subject != "not expired" {
			continue
		}
		pm, err := mail.ReadMessage(bytes.NewReader(c.Data))
		if err != nil {
			t.Fatal(err)
		}
		if d, err := pm.Header.Date(); err != nil || d.Before(before) {
			t.Errorf("Date %q (%v), want when MAIL stored the message", pm.Header.Get("Date"), err)
		}
	}
}
