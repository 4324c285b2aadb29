package relay_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/relay"
)

// watchLane samples the lane's status until stop is called and returns
// the largest InFlight and Sessions it saw.
func watchLane(h *harness, alias string) (stop func() (inFlight, sessions int)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var maxIn, maxSess int
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			for _, l := range h.engine.Status() {
				if l.Account == alias {
					maxIn, maxSess = max(maxIn, l.InFlight), max(maxSess, l.Sessions)
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() (int, int) {
		close(done)
		wg.Wait()
		return maxIn, maxSess
	}
}

func TestLookaheadHoldsPreparedMessagesWithinTheLimits(t *testing.T) {
	const conns, ahead, n = 2, 4, 20
	h := newHarness(t, setup{engine: relay.Config{Lookahead: ahead}})
	h.enroll("ahead", "ahead@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = conns })
	stop := watchLane(h, "ahead")
	// Slow transactions, so the lane fills its sessions and its lookahead.
	h.fake.DelayNextData(n, 50*time.Millisecond)
	for i := range n {
		h.publish("ahead", fmt.Sprintf("ahead-%02d", i), fmt.Sprintf("ahead %02d", i))
	}
	h.waitFor("the lookahead to fill", func() bool { return h.lane("ahead").InFlight == conns+ahead })
	h.waitFor("every message delivered and acked", func() bool { return len(h.delivered()) == n && h.queued() == 0 })
	maxIn, maxSess := stop()
	if maxIn > conns+ahead {
		t.Errorf("the lane held %d messages, want at most %d sessions + %d ahead", maxIn, conns, ahead)
	}
	if maxSess > conns {
		t.Errorf("%d sessions open, want at most MaxConns %d: waiting messages must not take sessions", maxSess, conns)
	}
	for subject, k := range h.delivered() {
		if k != 1 {
			t.Errorf("%q delivered %d times", subject, k)
		}
	}
	if sent := h.outcome("ahead", "sent"); sent != n {
		t.Errorf("%v sent, want %d", sent, n)
	}
	if msgs, _ := h.paced("ahead=contoso.com"); msgs != n {
		t.Errorf("the pacing record counts %d messages, want %d", msgs, n)
	}
}

func TestLookaheadStopsAtItsByteBudget(t *testing.T) {
	// 40 KB messages against a 64 KiB budget: with one in its session
	// the next does not fit, so none waits in memory; the 100 KB one,
	// over the whole budget, still goes through a free session.
	h := newHarness(t, setup{engine: relay.Config{Lookahead: 8, LookaheadBytes: 64 << 10}})
	h.enroll("bytes", "bytes@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	stop := watchLane(h, "bytes")
	h.fake.DelayNextData(6, 30*time.Millisecond)
	sizes := []int{40 << 10, 40 << 10, 100 << 10, 40 << 10, 40 << 10, 40 << 10}
	for i, size := range sizes {
		h.publishMsg(&message.Message{ID: fmt.Sprintf("big-%d", i), Account: "bytes", To: []string{"ops@fabrikam.com"},
			Subject: fmt.Sprintf("big %d", i), Text: strings.Repeat("x", size)})
	}
	h.waitFor("every message delivered and acked", func() bool { return len(h.delivered()) == len(sizes) && h.queued() == 0 })
	if maxIn, _ := stop(); maxIn != 1 {
		t.Errorf("the lane held up to %d messages; 40 KB ones against a 64 KiB budget allow 1", maxIn)
	}
	if sent := h.outcome("bytes", "sent"); sent != float64(len(sizes)) {
		t.Errorf("%v sent, want %d", sent, len(sizes))
	}

	// Small messages against the same budget do wait ahead.
	stop = watchLane(h, "bytes")
	h.fake.DelayNextData(10, 30*time.Millisecond)
	for i := range 10 {
		h.publish("bytes", fmt.Sprintf("small-%d", i), fmt.Sprintf("small %d", i))
	}
	h.waitFor("the small ones delivered", func() bool { return len(h.delivered()) == len(sizes)+10 && h.queued() == 0 })
	if maxIn, _ := stop(); maxIn < 2 {
		t.Errorf("small messages: the lane held at most %d, want some waiting ahead", maxIn)
	}
}

func TestWaitingMessagesGoBackWhenTheAccountPauses(t *testing.T) {
	const ahead = 4
	h := newHarness(t, setup{engine: relay.Config{Lookahead: ahead}})
	h.enroll("halt", "halt@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	// The first transaction is slow; while it runs, the others wait
	// prepared. It then meets the quota reply and the account pauses.
	h.fake.DelayNextData(1, time.Second)
	for i := range 1 + ahead {
		h.publish("halt", fmt.Sprintf("halt-%d", i), fmt.Sprintf("halt %d", i))
	}
	h.waitFor("one sending and the lookahead full", func() bool { return h.lane("halt").InFlight == 1+ahead })
	h.fake.SetQuotaExceeded("halt@contoso.com", true)
	h.waitFor("the waiting messages back in the stream", func() bool {
		return strings.Count(h.logs.String(), "account paused before the message's turn came") == ahead
	})
	if d := len(h.delivered()); d != 0 {
		t.Fatalf("%d delivered while the account was paused", d)
	}
	if msgs, _ := h.paced("halt=contoso.com"); msgs != 0 {
		t.Errorf("the pacing record counts %d messages; every reservation should be given back", msgs)
	}
	h.fake.SetQuotaExceeded("halt@contoso.com", false)
	h.waitFor("every message delivered after the pause", func() bool { return len(h.delivered()) == 1+ahead && h.queued() == 0 })
	for subject, k := range h.delivered() {
		if k != 1 {
			t.Errorf("%q delivered %d times", subject, k)
		}
	}
	if dl := h.deadLetters("halt"); len(dl) != 0 {
		t.Errorf("%d dead letters; a pause never dead-letters", len(dl))
	}
}

func TestShutdownGivesWaitingMessagesBack(t *testing.T) {
	const ahead = 3
	h := newHarness(t, setup{engine: relay.Config{Lookahead: ahead}})
	h.enroll("quit", "quit@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	h.fake.DelayNextData(1, 500*time.Millisecond)
	for i := range 1 + ahead {
		h.publish("quit", fmt.Sprintf("quit-%d", i), fmt.Sprintf("quit %d", i))
	}
	// Every message prepared (its reservation written) and the first one's
	// DATA held by the fake: the stop lets that one finish.
	h.waitFor("one sending and the lookahead prepared", func() bool {
		if h.lane("quit").InFlight != 1+ahead || h.fake.DataInProgress() != 1 {
			return false // (and the pacing record may not exist yet)
		}
		msgs, _ := h.paced("quit=contoso.com")
		return msgs == 1+ahead
	})
	h.stop() // graceful: the transaction in flight finishes
	if d := len(h.delivered()); d != 1 {
		t.Fatalf("%d delivered, want the one in flight at the stop", d)
	}
	if q := h.queued(); q != ahead {
		t.Errorf("%d queued after the stop, want the %d that waited", q, ahead)
	}
	if msgs, _ := h.paced("quit=contoso.com"); msgs != 1 {
		t.Errorf("the pacing record counts %d messages, want 1: the waiting ones' reservations given back", msgs)
	}
}

func TestOneConnectionSendsInStreamOrder(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("order", "order@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	const n = 40
	h.fake.DelayNextData(n, 5*time.Millisecond) // so the lookahead fills
	for i := range n {
		h.publish("order", fmt.Sprintf("order-%02d", i), fmt.Sprintf("order %02d", i))
	}
	h.waitFor("every message delivered", func() bool { return len(h.delivered()) == n })
	var got []string
	for _, m := range h.fake.Messages() {
		if strings.HasPrefix(m.Subject, "order ") {
			got = append(got, m.Subject)
		}
	}
	for i, subject := range got {
		if want := fmt.Sprintf("order %02d", i); subject != want {
			t.Fatalf("message %d to arrive was %q, want %q: one connection must keep stream order\n%v", i, subject, want, got)
		}
	}
}

func TestLookaheadStopsAtTheDaysBudget(t *testing.T) {
	// 10 recipients left today and 30 messages queued: exactly 10 go,
	// then the account pauses for the day; the lookahead must not take
	// messages the budget cannot carry and pause with budget unspent.
	h := newHarness(t, setup{})
	h.enroll("daily", "daily@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.MaxConns, a.PerDay = 1, 10
	})
	h.fake.DelayNextData(30, 5*time.Millisecond)
	for i := range 30 {
		h.publish("daily", fmt.Sprintf("daily-%02d", i), fmt.Sprintf("daily %02d", i))
	}
	h.waitFor("the day's budget spent and the account paused", func() bool {
		l := h.lane("daily")
		return l.Paused && l.PauseClass == "quota"
	})
	if d := len(h.delivered()); d != 10 {
		t.Errorf("%d delivered before the pause, want the 10 the day's budget allows", d)
	}
	if _, rcpts := h.paced("daily=contoso.com"); rcpts != 10 {
		t.Errorf("the pacing record counts %d recipients, want 10", rcpts)
	}
	if dl := h.deadLetters("daily"); len(dl) != 0 {
		t.Errorf("%d dead letters; a spent budget never dead-letters", len(dl))
	}
}

func TestAccountChangeSendsWaitingMessagesBackToBePreparedAgain(t *testing.T) {
	const ahead = 4
	h := newHarness(t, setup{engine: relay.Config{Lookahead: ahead}})
	a := h.enroll("moved", "moved@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	h.fake.DelayNextData(1, time.Second)
	for i := range 1 + ahead {
		h.publish("moved", fmt.Sprintf("moved-%d", i), fmt.Sprintf("moved %d", i))
	}
	h.waitFor("one sending and the lookahead prepared", func() bool {
		return h.lane("moved").InFlight == 1+ahead && h.fake.DataInProgress() == 1
	})
	// A new per-minute pace (any change) while four messages wait.
	a.PerMinute = 1 << 19
	if err := h.accounts.Put(h.ctx, a); err != nil {
		t.Fatal(err)
	}
	h.waitFor("every message delivered", func() bool { return len(h.delivered()) == 1+ahead && h.queued() == 0 })
	// keepQueued logs a message's going back after its Nak, so possibly
	// after its redelivery was sent and acked: wait for the lines.
	h.waitFor("the waiting messages' going back logged", func() bool {
		return strings.Count(h.logs.String(), "account changed before the message's turn came") >= ahead
	})
	if n := strings.Count(h.logs.String(), "account changed before the message's turn came"); n != ahead {
		t.Errorf("%d messages went back to be prepared again, want the %d that waited", n, ahead)
	}
	for subject, k := range h.delivered() {
		if k != 1 {
			t.Errorf("%q delivered %d times", subject, k)
		}
	}
	if msgs, _ := h.paced("moved=contoso.com"); msgs != 1+ahead {
		t.Errorf("the pacing record counts %d messages, want %d: reservations of the old preparation given back", msgs, 1+ahead)
	}
}

func TestLaneWaitingForThePacerDoesNotSpin(t *testing.T) {
	// 2 messages a minute, a minute passing in half a second: the lane
	// spends most of the run waiting for the next minute. It must sleep
	// through it, not ask the pacer over and over (it once did, a CPU
	// core per waiting lane, since giving its slots back woke itself).
	clk := clock.NewCompressed(120)
	h := newHarness(t, setup{clock: clk, fake: fakeo365.Config{AccessTTL: 365 * 24 * time.Hour, AuthCodeTTL: 365 * 24 * time.Hour}})
	h.enroll("slowpace", "slowpace@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) {
		a.MaxConns, a.PerMinute = 1, 2
	})
	const n = 8 // four compressed minutes, about 2 s
	for i := range n {
		h.publish("slowpace", fmt.Sprintf("sp-%d", i), fmt.Sprintf("slow pace %d", i))
	}
	h.waitFor("every message delivered", func() bool { return len(h.delivered()) == n })
	if peeks := h.engine.PacerPeeks(); peeks > 50*n {
		t.Fatalf("the lane asked the pacer %d times for %d messages: it spins while it waits", peeks, n)
	}
}

func TestManyRecipientsAtTheDaysEndPauseOnceWithoutLosingBudget(t *testing.T) {
	// 11 recipients a day and messages of 6: one fits, then the lane
	// pauses for the day. Messages that met the spent budget while
	// others held reservations go back without a pause of their own,
	// and the lane fetches nothing more until it pauses.
	h := newHarness(t, setup{})
	h.enroll("six", "six@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns, a.PerDay = 3, 11 })
	h.fake.DelayNextData(1, 200*time.Millisecond)
	for i := range 40 {
		m := msgFor("six", fmt.Sprintf("six-%02d", i), fmt.Sprintf("six %02d", i))
		m.To = []string{"a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com", "d@fabrikam.com", "e@fabrikam.com", "f@fabrikam.com"}
		h.publishMsg(m)
	}
	h.waitFor("the account paused for the day, nothing in flight", func() bool {
		l := h.lane("six")
		return l.Paused && l.PauseClass == "quota" && l.InFlight == 0
	})
	if d := len(h.delivered()); d != 1 {
		t.Errorf("%d delivered, want the 1 that fits 11 recipients", d)
	}
	if _, rcpts := h.paced("six=contoso.com"); rcpts != 6 {
		t.Errorf("the pacing record counts %d recipients, want 6", rcpts)
	}
	// pause counts after the lane shows Paused: wait for the count.
	h.waitFor("the pause counted", func() bool { return h.metric("relay_account_pauses_total", "account", "six") >= 1 })
	if p := h.metric("relay_account_pauses_total", "account", "six"); p != 1 {
		t.Errorf("%v pauses, want 1", p)
	}
	if back := h.outcome("six", "paused"); back > 3+relay.DefaultLookahead {
		t.Errorf("%v messages went back, more than the lane can hold", back)
	}
	if dl := h.deadLetters("six"); len(dl) != 0 {
		t.Errorf("%d dead letters; a spent budget never dead-letters", len(dl))
	}
}

func TestAccountEditThatKeepsPreparedMessagesStillApplies(t *testing.T) {
	// A change prepared messages do not depend on (connections here)
	// sends nothing back, but the lane takes the new record all the same.
	h := newHarness(t, setup{})
	a := h.enroll("edit", "edit@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	a.MaxConns = 2
	if err := h.accounts.Put(h.ctx, a); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the lane to take the new record", func() bool {
		return h.engine.LaneAccount("edit").MaxConns == 2 && h.lane("edit").ConnLimit == 2
	})
	h.publish("edit", "edit-1", "after the edit")
	h.waitFor("delivery", func() bool { return h.delivered()["after the edit"] == 1 })
	if strings.Contains(h.logs.String(), "account changed before the message's turn came") {
		t.Error("a change of connections sent a prepared message back")
	}
}

func TestLookaheadRefillsInGroups(t *testing.T) {
	// One session, the lookahead full: as each message ends, the lane
	// must not pull (and reserve pacing for) the next one on its own,
	// but wait until half the lookahead is free and take those together,
	// so their reservations share a write. Each pull asks the pacer once.
	const ahead, n = 16, 96
	h := newHarness(t, setup{engine: relay.Config{Lookahead: ahead}})
	h.enroll("groups", "groups@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxConns = 1 })
	h.fake.DelayNextData(n, 2*time.Millisecond) // so the lookahead fills
	for i := range n {
		h.publish("groups", fmt.Sprintf("groups-%02d", i), fmt.Sprintf("groups %02d", i))
	}
	h.waitFor("every message delivered and acked", func() bool { return len(h.delivered()) == n && h.queued() == 0 })
	// One pull for the session and the first lookahead, then one for
	// every ahead/2 messages sent: about n/8 with room for a few more.
	if peeks := h.engine.PacerPeeks(); peeks > n/3 {
		t.Fatalf("the lane pulled %d times for %d messages: it refills the lookahead a message at a time", peeks, n)
	}
}
