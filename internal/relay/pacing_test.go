package relay_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/pacing"
	"relay365/internal/relay"
	"relay365/internal/submit"
)

// TestPacingOnCompressedClock offers ten times what Office 365 allows and
// checks the fake never had to refuse: no 432 (connections) and no quota
// reply, every message delivered once, and the acceptances spread out as
// the limits demand. The relay and the fake share one compressed clock.
func TestPacingOnCompressedClock(t *testing.T) {
	t.Run("30 messages a minute", func(t *testing.T) {
		clk := clock.NewCompressed(120) // a minute passes in half a second
		h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{PerMinute: 30, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
		h.enroll("paced", "paced@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
			a.PerMinute, a.PerDay = 0, 0 // Office 365's defaults: 30 a minute, 10,000 a day
		})
		// The consent step's test mail is not the engine's to count: let
		// it leave Office 365's window first.
		<-clk.NewTimer(time.Minute).C()
		// 10x the allowed rate: 300 a minute, for half a minute.
		const n = 150
		for i := range n {
			h.publish("paced", fmt.Sprintf("p-%03d", i), fmt.Sprintf("paced %03d", i))
			<-clk.NewTimer(200 * time.Millisecond).C()
		}
		h.waitFor("all delivered", func() bool { return h.queued() == 0 })
		checkPaced(t, h, n, time.Minute, 30)
	})
	t.Run("10,000 recipients a day, here 20", func(t *testing.T) {
		clk := clock.NewCompressed(86400) // a day passes in a second
		h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{PerMinute: 30, PerDay: 20, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
		h.enroll("daily", "daily@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
			a.PerMinute, a.PerDay = 0, 20
		})
		<-clk.NewTimer(24 * time.Hour).C() // the consent test mail, as above
		// 80 recipients at once: four days' budget.
		const n = 20
		queueDaily(h, n)
		h.waitFor("all delivered", func() bool { return h.queued() == 0 })
		checkPaced(t, h, n, 24*time.Hour, 5)
		if h.metric("relay_account_pauses_total", "account", "daily", "class", "quota") < 1 {
			t.Fatal("a spent daily budget must pause the account")
		}
	})
}

// checkPaced: n messages delivered once each, no refusal for rate or
// connections, and no more than limit accepted in any window.
func checkPaced(t *testing.T, h *harness, n int, window time.Duration, limit int) {
	t.Helper()
	for k, c := range h.fake.Replies() {
		if k == "432 4.3.2" || k == "554 5.2.0" || k == "550 5.1.90" {
			t.Fatalf("the fake answered %s %d times", k, c)
		}
	}
	var times []time.Time
	for subj, c := range h.delivered() {
		if c != 1 {
			t.Fatalf("%s delivered %d times", subj, c)
		}
	}
	if got := len(h.delivered()); got != n {
		t.Fatalf("%d delivered, want %d", got, n)
	}
	for _, m := range h.fake.Messages() {
		if m.Subject[:8] != "Relay365" {
			times = append(times, m.Time)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	for i := range times {
		if i+limit < len(times) && times[i+limit].Sub(times[i]) < window {
			t.Fatalf("%d messages within %s", limit+1, times[i+limit].Sub(times[i]))
		}
	}
	span := times[len(times)-1].Sub(times[0])
	if min := time.Duration(n/limit-1) * window; span < min {
		t.Fatalf("%d messages in %s: not paced (want at least %s)", n, span, min)
	}
	t.Logf("%d messages accepted over %s of the compressed clock", n, span.Round(time.Second))
}

// TestLostTransactionCountsUntilItWasLost: a transaction whose connection
// is lost after the content (here the relay's wait for the reply ends)
// may have been counted by Office 365 as late as that moment, so its
// reservation moves there. Left where it was made, it would stop counting
// early whenever the transaction outlasted that second. On the compressed
// clock the 2 s the relay waits for the reply are four minutes, so the
// moved reservation lies minutes after the publish, whatever the delays
// before the transaction.
func TestLostTransactionCountsUntilItWasLost(t *testing.T) {
	clk := clock.NewCompressed(120)
	h := newHarness(t, setup{
		clock:     clk,
		fake:      fakeo365.Config{MaxConns: -1, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour},
		engine:    relay.Config{Retry: relay.Backoff{Base: time.Hour, Max: time.Hour}}, // no retry within the test
		transport: &submit.Transport{DataTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second},
	})
	h.enroll("slow", "slow@contoso.com", "contoso.onmicrosoft.com", nil)
	h.fake.DelayNextData(1, 4*time.Second)
	published := clk.Now()
	h.publish("slow", "s-0", "slow 0")
	h.waitFor("the lost transaction to go back", func() bool { return h.outcome("slow", "retried") == 1 })
	var rec struct{ Msgs []struct{ T, N int64 } }
	if err := json.Unmarshal(h.pacing("slow=contoso.com").Value(), &rec); err != nil {
		t.Fatal(err)
	}
	n, last := int64(0), int64(0)
	for _, s := range rec.Msgs {
		if s.N > 0 {
			n, last = n+s.N, s.T
		}
	}
	if n != 1 || last < published.Add(2*time.Minute).Unix() {
		t.Fatalf("the lost transaction counts %d in the slot at %+d s after the publish; want 1, moved at least two minutes on",
			n, last-published.Unix())
	}
}

// The consent test mail is counted in the mailbox's budget: Office 365
// counts it against the 30 a minute, and a burst right after consent
// (authtool login, authtool test, a sandbox start) met a quota refusal
// at its 30th message.
func TestConsentTestMailCountsInThePacing(t *testing.T) {
	h := newHarness(t, setup{})
	p, err := pacing.Open(h.ctx, h.js, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := h.fake.Account("counted", "counted@contoso.com", "contoso.onmicrosoft.com")
	if err := (consent.Enroller{Accounts: h.accounts, Store: h.store, Pacing: p}).SignIn(h.ctx, a, consent.FollowURL(h.ctx)); err != nil {
		t.Fatal(err)
	}
	if msgs, rcpts := h.paced("counted=contoso.com"); msgs != 1 || rcpts != 1 {
		t.Fatalf("pacing record after consent: %d messages, %d recipients; want the test mail, 1 and 1", msgs, rcpts)
	}
}

// TestSlowTransactionKeepsCounting: Office 365 counts a message when it
// accepts it, at the end of DATA, which may come minutes after the
// relay's reservation (a slow upload, a slow reply: the relay waits up to
// DataTimeout, 5 minutes). A reservation left where it was made stopped
// counting a minute later while the transaction was still under way;
// the next message then took its place, and when the slow one was
// accepted Office 365 had both in its minute and refused one (554 5.2.0,
// the account paused). Here one message a minute: A's end of DATA takes
// 90 s, B may not be sent in the minute before A's 250. Found by review.
func TestSlowTransactionKeepsCounting(t *testing.T) {
	clk := clock.NewCompressed(120) // a minute passes in half a second
	h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{PerMinute: 1, AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
	h.enroll("slow", "slow@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.PerMinute = 1
	})
	<-clk.NewTimer(2 * time.Minute).C()           // the consent test mail leaves the minute
	h.fake.DelayNextData(1, 750*time.Millisecond) // 90 s on the compressed clock
	h.publish("slow", "a", "slow message a")
	h.waitFor("A's end of DATA held", func() bool { return h.fake.DataInProgress() == 1 })
	h.publish("slow", "b", "slow message b")
	h.waitFor("both delivered or a quota reply", func() bool {
		return len(h.delivered()) == 2 || h.fake.Replies()["554 5.2.0"] > 0
	})
	if n := h.fake.Replies()["554 5.2.0"]; n > 0 {
		t.Fatalf("the fake answered 554 5.2.0 %d times: a message was sent while the slow one, not yet accepted, no longer counted", n)
	}
	checkPaced(t, h, 2, time.Minute, 1)
}

// queueDaily queues n messages of four recipients each for account
// "daily", subjects "daily 000" on.
func queueDaily(h *harness, n int) {
	h.t.Helper()
	for i := range n {
		m := msgFor("daily", fmt.Sprintf("d-%03d", i), fmt.Sprintf("daily %03d", i))
		m.To = []string{"a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com", "d@fabrikam.com"}
		h.publishMsg(m)
	}
}
