package relay_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// TestThousandMessagesUnderFaults: 1,000 messages over 3 accounts while the
// fake answers 10 % of DATA with 451 and drops 2 % of connections. Every
// message is delivered exactly once or sits in MAIL_DLQ with a reason, and
// the counts add up.
func TestThousandMessagesUnderFaults(t *testing.T) {
	h := newHarness(t, setup{
		fake: fakeo365.Config{PerMinute: -1, PerDay: -1},
		// A low MaxDeliver so that some messages run out of attempts and
		// the dead-letter side of the conservation is exercised too.
		engine: relay.Config{MaxDeliver: 3},
	})
	aliases := []string{"alpha", "beta", "gamma"}
	for _, a := range aliases {
		h.enroll(a, a+"@contoso.com", "contoso.onmicrosoft.com", nil)
	}
	h.fake.SetRandomFaults(20261127, 0.10, 0.02)
	const total, invalid = 1000, 10
	start := time.Now()
	for i := range total {
		alias := aliases[i%len(aliases)]
		m := msgFor(alias, fmt.Sprintf("load-%04d", i), fmt.Sprintf("load %04d", i))
		if i%(total/invalid) == 7 {
			m.To = nil // no recipients: dead-lettered as invalid
		}
		h.publishMsg(m)
	}
	h.waitFor("MAIL to drain", func() bool { return h.queued() == 0 })
	elapsed := time.Since(start)

	delivered := h.delivered()
	dlq := h.deadLetters("")
	dead := map[string]queue.DeadLetterEntry{}
	reasons := map[string]int{}
	for _, d := range dlq {
		if d.Reason == "" || d.Class == "" {
			t.Fatalf("dead letter without a reason: %+v", d)
		}
		if _, dup := dead[d.ID]; dup {
			t.Fatalf("%s dead-lettered twice", d.ID)
		}
		dead[d.ID] = d
		reasons[d.Class]++
	}
	for i := range total {
		id, subj := fmt.Sprintf("load-%04d", i), fmt.Sprintf("load %04d", i)
		n, isDead := delivered[subj], dead[id].ID != ""
		switch {
		case n > 1:
			t.Fatalf("%s delivered %d times", id, n)
		case n == 1 && isDead:
			t.Fatalf("%s delivered and dead-lettered", id)
		case n == 0 && !isDead:
			t.Fatalf("%s neither delivered nor dead-lettered", id)
		case i%(total/invalid) == 7 && dead[id].Class != "invalid":
			t.Fatalf("%s: want an invalid dead letter, got %+v", id, dead[id])
		}
	}
	if got := len(delivered) + len(dlq); got != total {
		t.Fatalf("delivered %d + dead-lettered %d = %d, want %d", len(delivered), len(dlq), got, total)
	}
	replies := h.fake.Replies()
	if replies["451 4.7.0"] == 0 {
		t.Fatal("the fault injection produced no 451")
	}
	conns := 0.0
	for _, a := range aliases {
		conns += h.metric("relay_smtp_connections_total", "account", a)
	}
	t.Logf("%d delivered, %d dead-lettered %v, in %s; fake replies %v; %v SMTP sessions opened",
		len(delivered), len(dlq), reasons, elapsed.Round(time.Millisecond), replies, conns)
}

// TestRevokedAccountDoesNotDelayOthers: two accounts; one is revoked
// (its tokens die, so its lane pauses waiting for consent). The healthy
// account's mail is delivered while the other is paused; once the revoked
// account is consented again, its queued mail flows, each message once.
func TestRevokedAccountDoesNotDelayOthers(t *testing.T) {
	h := newHarness(t, setup{
		fake: fakeo365.Config{PerMinute: -1},
		// Slow probes: only the token record watch can resume in time.
		engine: relay.Config{Pause: relay.Backoff{Base: time.Hour, Max: time.Hour}},
	})
	healthy := h.enroll("healthy", "healthy@contoso.com", "contoso.onmicrosoft.com", nil)
	revoked := h.enroll("revoked", "revoked@contoso.com", "contoso.onmicrosoft.com", nil)

	const n = 20
	round := func(name string) (latencies []time.Duration) {
		published := map[string]time.Time{}
		for i := range n {
			for _, a := range []account.Account{healthy, revoked} {
				subj := fmt.Sprintf("%s %s %02d", name, a.Alias, i)
				published[subj] = time.Now()
				h.publishMsg(msgFor(a.Alias, strings.ReplaceAll(subj, " ", "-"), subj))
			}
		}
		h.waitFor("the healthy account's mail", func() bool {
			d := h.delivered()
			for i := range n {
				if d[fmt.Sprintf("%s healthy %02d", name, i)] != 1 {
					return false
				}
			}
			return true
		})
		for _, m := range h.fake.Messages() {
			if strings.HasPrefix(m.Subject, name+" healthy") {
				latencies = append(latencies, m.Time.Sub(published[m.Subject]))
			}
		}
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		return latencies
	}
	before := round("before")
	h.waitFor("both accounts idle", func() bool { return h.queued() == 0 })

	h.fake.RevokeMailbox(revoked.Mailbox)
	during := round("during")
	h.waitFor("the revoked account to pause", func() bool { return h.lane("revoked").Paused })
	for subj, c := range h.delivered() {
		if strings.HasPrefix(subj, "during revoked") {
			t.Fatalf("%q delivered %d times through a revoked account", subj, c)
		}
	}
	if h.lane("healthy").Paused {
		t.Fatal("the healthy account is paused")
	}
	t.Logf("healthy account latency before the revocation: median %s max %s; while the other is revoked: median %s max %s",
		before[len(before)/2], before[len(before)-1], during[len(during)/2], during[len(during)-1])
	// pause counts after the lane shows Paused (the count follows the
	// state's lock): wait for it.
	h.waitFor("the revoked account's pause for its tokens counted", func() bool {
		return h.metric("relay_account_pauses_total", "account", "revoked", "class", string(relay.ClassIdentity)) >= 1
	})
	if got := h.outcome("revoked", "dead_lettered"); got != 0 {
		t.Fatalf("%v of the revoked account's messages dead-lettered", got)
	}

	// Consent again: the token record changes and the lane resumes at
	// once (the probe schedule is an hour).
	if err := relaytestEnroll(h, revoked); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the revoked account's mail after consent", func() bool { return h.queued() == 0 })
	d := h.delivered()
	for i := range n {
		if c := d[fmt.Sprintf("during revoked %02d", i)]; c != 1 {
			t.Fatalf("during revoked %02d delivered %d times", i, c)
		}
	}
}
