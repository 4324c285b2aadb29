package pacing_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/clock"
	"relay365/internal/pacing"
	"relay365/internal/queue/queuetest"
)

// manualClock is advanced by hand.
type manualClock struct{ *clock.Fake }

// pacerTest is a JetStream, a manual clock and a way to open pacers on
// them (each one as another process would).
type pacerTest struct {
	t     *testing.T
	ctx   context.Context
	js    jetstream.JetStream
	clock manualClock
}

func newPacerTest(t *testing.T) *pacerTest {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return &pacerTest{t: t, ctx: ctx, js: queuetest.Start(t).JS, clock: manualClock{clock.NewFake(time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC))}}
}

func (pt *pacerTest) open() *pacing.Pacer {
	pt.t.Helper()
	p, err := pacing.Open(pt.ctx, pt.js, pt.clock)
	if err != nil {
		pt.t.Fatal(err)
	}
	return p
}

func TestPacerWindowsSurviveARestart(t *testing.T) {
	pt := newPacerTest(t)
	ctx, clock, p := pt.ctx, pt.clock, pt.open()
	lim := pacing.Limits{PerMinute: 3, PerDay: 10}
	const mbx = "Alerts+ops@Contoso.com"
	var tickets []pacing.Ticket
	for i := range 3 {
		tk, wait, err := p.Reserve(ctx, mbx, 2, lim)
		if err != nil || wait != 0 {
			t.Fatalf("reservation %d: wait %s, %v", i, wait, err)
		}
		tickets = append(tickets, tk)
		clock.Advance(10 * time.Second)
	}
	// The minute is full: the first reservation (at 0s) leaves the
	// window at 61s (its one-second slot plus the minute), now is 30s.
	if allow, wait, _ := p.Peek(ctx, mbx, lim); allow != 0 || wait != 31*time.Second {
		t.Fatalf("Peek = %d, %s; want 0, 31s", allow, wait)
	}
	// A second process (or a restart) sees the same window.
	p2 := pt.open()
	if _, wait, _ := p2.Reserve(ctx, "alerts+ops@contoso.com", 1, lim); wait != 31*time.Second {
		t.Fatalf("after a restart: wait %s, want 31s", wait)
	}
	// A refused transaction gives its reservation back.
	if err := p2.Release(ctx, tickets[2]); err != nil {
		t.Fatal(err)
	}
	if allow, _, _ := p2.Peek(ctx, mbx, lim); allow != 1 {
		t.Fatalf("after a release: allow %d, want 1", allow)
	}
	// Confirming moves a reservation to the time of acceptance: the one
	// made at 0s, accepted at 30s, now counts until 91s.
	if err := p.Confirm(ctx, tickets[0]); err != nil {
		t.Fatal(err)
	}
	if _, wait, _ := p.Reserve(ctx, mbx, 1, pacing.Limits{PerMinute: 2, PerDay: 10}); wait != 41*time.Second {
		t.Fatalf("after a confirm: wait %s, want 41s (the reservation from 10s)", wait)
	}
	// The day: 4 of 10 recipients are used; 7 more do not fit until the
	// oldest ten-minute slot leaves the 24 hours.
	clock.Advance(time.Hour)
	_, wait, _ := p.Reserve(ctx, mbx, 7, lim)
	if wait <= 22*time.Hour || wait > 24*time.Hour {
		t.Fatalf("day budget: wait %s, want about 23h", wait)
	}
	if _, wait, _ := p.Reserve(ctx, mbx, 6, lim); wait != 0 {
		t.Fatalf("6 recipients fit the day's remaining 6: wait %s", wait)
	}
	clock.Advance(24*time.Hour + 10*time.Minute) // the day plus the last slot
	if tk, wait, err := p.Reserve(ctx, mbx, 10, lim); wait != 0 || err != nil || tk == (pacing.Ticket{}) {
		t.Fatalf("a day later the whole budget is back: wait %s, %v", wait, err)
	}
}

// TestPacerConcurrentReservationsAreExact: two pacers (two processes) and
// many sessions reserving at once. Each process group-commits its own
// sessions' updates and loses compare-and-set races to the other; still
// exactly the budget is handed out, no more and no less.
func TestPacerConcurrentReservationsAreExact(t *testing.T) {
	pt := newPacerTest(t)
	ctx := pt.ctx
	pacers := []*pacing.Pacer{pt.open(), pt.open()}
	const budget, sessions = 25, 40
	lim := pacing.Limits{PerMinute: budget, PerDay: 1000}
	var granted, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			_, wait, err := pacers[i%2].Reserve(ctx, "alerts@contoso.com", 1, lim)
			switch {
			case err != nil:
				t.Error(err)
			case wait == 0:
				granted.Add(1)
			default:
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	if granted.Load() != budget || refused.Load() != sessions-budget {
		t.Fatalf("granted %d, refused %d; want %d and %d", granted.Load(), refused.Load(), budget, sessions-budget)
	}
	// Peek may use a remembered record up to a second old (another
	// process's writes show after that); a fresh pacer reads the key.
	if allow, _, err := pt.open().Peek(ctx, "alerts@contoso.com", lim); err != nil || allow != 0 {
		t.Fatalf("Peek allows %d (%v), want 0", allow, err)
	}
}

// TestPacerConfirmInTheSameSlotWritesNothing: a transaction accepted in
// the second (and ten minutes) it was reserved in leaves the record as it
// was, so Confirm costs no write; a later acceptance moves it.
func TestPacerConfirmInTheSameSlotWritesNothing(t *testing.T) {
	pt := newPacerTest(t)
	ctx, clock, p := pt.ctx, pt.clock, pt.open()
	kv, err := pt.js.KeyValue(ctx, pacing.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	revision := func() uint64 {
		e, err := kv.Get(ctx, "alerts=contoso.com")
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	lim := pacing.Limits{PerMinute: 30, PerDay: 100}
	tk, _, err := p.Reserve(ctx, "alerts@contoso.com", 1, lim)
	if err != nil {
		t.Fatal(err)
	}
	rev := revision()
	clock.Advance(300 * time.Millisecond)
	if err := p.Confirm(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if got := revision(); got != rev {
		t.Fatalf("Confirm in the same second wrote (revision %d → %d)", rev, got)
	}
	tk, _, err = p.Reserve(ctx, "alerts@contoso.com", 1, lim)
	if err != nil {
		t.Fatal(err)
	}
	rev = revision()
	clock.Advance(2 * time.Second)
	if err := p.Confirm(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if got := revision(); got == rev {
		t.Fatal("Confirm two seconds later wrote nothing")
	}
}

// TestPacerAtExactlyTheLimitDoesNotFallBehind offers a mailbox exactly
// its 30 messages a minute for five minutes, each transaction taking 7 ms
// from reservation to the 250. Every message may start only when the one
// 30 before it, counted from its 250, has left the minute (what keeps
// Office 365's window, whose timestamp lies between the two, within the
// limit); and none may wait much longer than that. Counted in whole
// seconds, the wait grew by up to a second every minute.
func TestPacerAtExactlyTheLimitDoesNotFallBehind(t *testing.T) {
	pt := newPacerTest(t)
	ctx, clock, p := pt.ctx, pt.clock, pt.open()
	const (
		limit = 30
		n     = 150 // five minutes
		every = 2 * time.Second
		txn   = 7 * time.Millisecond
	)
	lim := pacing.Limits{PerMinute: limit, PerDay: 10000}
	arrive := clock.Now().Add(400 * time.Millisecond) // not on a second
	var reserved, accepted []time.Time
	var worst time.Duration
	for k := range n {
		if clock.Now().Before(arrive) {
			clock.Set(arrive)
		}
		var tk pacing.Ticket
		for {
			var wait time.Duration
			var err error
			tk, wait, err = p.Reserve(ctx, "alerts@contoso.com", 1, lim)
			if err != nil {
				t.Fatal(err)
			}
			if wait == 0 {
				break
			}
			clock.Advance(wait)
		}
		reserved = append(reserved, clock.Now())
		worst = max(worst, clock.Now().Sub(arrive))
		clock.Advance(txn)
		if err := p.Confirm(ctx, tk); err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, clock.Now())
		if k >= limit {
			if gap := reserved[k].Sub(accepted[k-limit]); gap < time.Minute {
				t.Fatalf("message %d started %s after the 250 of message %d: within the minute", k, gap, k-limit)
			}
		}
		arrive = arrive.Add(every)
	}
	// Each minute adds at most one transaction time to the wait.
	if bound := (n/limit)*txn + 10*time.Millisecond; worst > bound {
		t.Fatalf("a message waited %s for the pacer, want at most %s", worst, bound)
	}
	t.Logf("longest wait over %d messages at exactly %d a minute: %s", n, limit, worst)

	// What was written keeps each slot's last acceptance within its
	// second, so a worker that ignores the field counts the slot longer.
	kv, err := pt.js.KeyValue(ctx, pacing.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "alerts=contoso.com")
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Msgs []struct{ T, N, L int64 } `json:"msgs"`
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	exact := 0
	for _, s := range rec.Msgs {
		if s.L != 0 {
			exact++
			if s.L <= s.T*1000 || s.L > (s.T+1)*1000 {
				t.Fatalf("slot %d counted to %d ms: outside its second", s.T, s.L)
			}
		}
	}
	if exact == 0 {
		t.Fatalf("no slot of %s written with its last acceptance", e.Value())
	}
}

// TestPacerCountsToTheSlotEndWhatOthersShare: a slot that another process
// (or a reservation not yet accepted) added to is counted to its end,
// whatever this process confirmed in it; only a slot all of whose messages
// this process saw accepted is counted to the last acceptance.
func TestPacerCountsToTheSlotEndWhatOthersShare(t *testing.T) {
	pt := newPacerTest(t)
	ctx, clock := pt.ctx, pt.clock
	a, b := pt.open(), pt.open()
	lim := pacing.Limits{PerMinute: 2, PerDay: 100}
	reserve := func(p *pacing.Pacer) (pacing.Ticket, time.Duration) {
		t.Helper()
		tk, wait, err := p.Reserve(ctx, "alerts@contoso.com", 1, lim)
		if err != nil {
			t.Fatal(err)
		}
		return tk, wait
	}
	start := clock.Now() // on a second
	clock.Advance(100 * time.Millisecond)
	ta, _ := reserve(a)
	clock.Advance(5 * time.Millisecond)
	if err := a.Confirm(ctx, ta); err != nil {
		t.Fatal(err)
	}
	clock.Advance(100 * time.Millisecond)
	tb, _ := reserve(b) // the same second, another process
	clock.Advance(700 * time.Millisecond)
	if err := b.Confirm(ctx, tb); err != nil { // accepted at 0.905 s
		t.Fatal(err)
	}
	// At 60.5 s the message accepted at 0.905 s is still in the minute:
	// counting the slot to a's own acceptance (0.105 s) would let a third
	// message out.
	clock.Set(start.Add(time.Minute + 500*time.Millisecond))
	for name, p := range map[string]*pacing.Pacer{"a": a, "b": b} {
		if _, wait, err := p.Reserve(ctx, "alerts@contoso.com", 1, lim); err != nil || wait < 400*time.Millisecond {
			t.Fatalf("%s: a third message in the minute granted (wait %s, %v)", name, wait, err)
		}
	}

	// Alone in its slot and accepted, a message counts until its
	// acceptance leaves the minute, also after the record is rewritten.
	clock.Set(start.Add(3*time.Minute + 200*time.Millisecond))
	t1, _ := reserve(a)
	clock.Advance(5 * time.Millisecond)
	if err := a.Confirm(ctx, t1); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second)
	t2, _ := reserve(a) // written with the first slot's last acceptance
	if err := a.Confirm(ctx, t2); err != nil {
		t.Fatal(err)
	}
	clock.Set(start.Add(4*time.Minute + 300*time.Millisecond))
	// A new process reads it from the record a wrote with t2.
	for name, p := range map[string]*pacing.Pacer{"a": a, "a new process": pt.open()} {
		if allow, wait, err := p.Peek(ctx, "alerts@contoso.com", lim); err != nil || allow != 1 {
			t.Fatalf("%s: the message accepted at 3:00.205 still counts at 4:00.300 (allow %d, wait %s, %v)", name, allow, wait, err)
		}
	}
}

// TestPacerRecordMadeAgainForgetsOldConfirmations: the record is replaced
// (its key deleted by an operator, or an unreadable value replaced) while
// process A remembers a confirmation in the current second. B's message
// then sits alone in that slot, as many as A confirmed there: counted to
// A's own 250, B's would leave the minute early. The record's lineage
// (paceRecord.E) tells A its confirmations belong to a record now gone.
// Found by review; fails without the lineage.
func TestPacerRecordMadeAgainForgetsOldConfirmations(t *testing.T) {
	for _, how := range []string{"deleted", "unreadable"} {
		t.Run(how, func(t *testing.T) {
			pt := newPacerTest(t)
			ctx, clock := pt.ctx, pt.clock
			a, b := pt.open(), pt.open()
			const mbx = "alerts@contoso.com"
			lim := pacing.Limits{PerMinute: 2, PerDay: 100}
			kv, err := pt.js.KeyValue(ctx, pacing.Bucket)
			if err != nil {
				t.Fatal(err)
			}
			start := clock.Now() // on a second, S
			clock.Set(start.Add(50 * time.Millisecond))
			c, wait, err := a.Reserve(ctx, mbx, 1, lim)
			if err != nil || wait != 0 {
				t.Fatal(wait, err)
			}
			clock.Set(start.Add(100 * time.Millisecond))
			if err := a.Confirm(ctx, c); err != nil { // C accepted at S+0.1 (same slot, no write)
				t.Fatal(err)
			}
			clock.Set(start.Add(200 * time.Millisecond))
			if how == "deleted" {
				err = kv.Delete(ctx, "alerts=contoso.com")
			} else {
				_, err = kv.Put(ctx, "alerts=contoso.com", []byte("not json"))
			}
			if err != nil {
				t.Fatal(err)
			}
			// B: Office 365 counts C (S+0.1) and now Y: 2, within the limit.
			clock.Set(start.Add(300 * time.Millisecond))
			y, wait, err := b.Reserve(ctx, mbx, 1, lim)
			if err != nil || wait != 0 {
				t.Fatal(wait, err)
			}
			clock.Set(start.Add(900 * time.Millisecond))
			if err := b.Confirm(ctx, y); err != nil { // Y accepted at S+0.9 (no write)
				t.Fatal(err)
			}
			// S+60.2: C has left Office 365's minute, Y has not: one more fits.
			clock.Set(start.Add(time.Minute + 200*time.Millisecond))
			if _, wait, err := a.Reserve(ctx, mbx, 1, lim); err != nil || wait != 0 {
				t.Fatal(wait, err)
			}
			// S+60.5: Y (until S+60.9) and Z count: nothing more may start.
			clock.Set(start.Add(time.Minute + 500*time.Millisecond))
			if _, wait, err := a.Reserve(ctx, mbx, 1, lim); err != nil || wait == 0 {
				t.Fatalf("a third message granted at S+60.5 while Y (accepted at S+0.9) and Z still count (wait %s, %v)", wait, err)
			}
		})
	}
}

// TestPacerRefusesOnlyOnTheCurrentRecord: a process that found the day's
// budget spent remembers that record, and a later refusal needs no write,
// so no lost compare-and-set tells it the record changed. When another
// process gives its reservation back (a refused transaction) or the key
// is deleted, the first process went on refusing from its remembered
// record: at the relay, the account paused for most of a day (PaceError
// with the day's wait) while the shared budget had room. Found by review;
// fails without the re-read before a refusal.
func TestPacerRefusesOnlyOnTheCurrentRecord(t *testing.T) {
	for _, how := range []string{"released", "deleted"} {
		t.Run(how, func(t *testing.T) {
			pt := newPacerTest(t)
			ctx := pt.ctx
			a, b := pt.open(), pt.open()
			const mbx = "alerts@contoso.com"
			lim := pacing.Limits{PerMinute: 30, PerDay: 10}
			tk, wait, err := a.Reserve(ctx, mbx, 10, lim)
			if err != nil || wait != 0 {
				t.Fatal(wait, err)
			}
			// B finds the day spent: right.
			if _, wait, err := b.Reserve(ctx, mbx, 1, lim); err != nil || wait < 23*time.Hour {
				t.Fatalf("B granted while A holds the whole day: wait %s, %v", wait, err)
			}
			if how == "released" {
				err = a.Release(ctx, tk) // A's transaction was refused
			} else {
				var kv jetstream.KeyValue
				if kv, err = pt.js.KeyValue(ctx, pacing.Bucket); err == nil {
					err = kv.Delete(ctx, "alerts=contoso.com")
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			pt.clock.Advance(time.Second)
			if _, wait, err := b.Reserve(ctx, mbx, 1, lim); err != nil || wait != 0 {
				t.Fatalf("B refuses from its remembered record although the day is free again: wait %s, %v", wait, err)
			}
		})
	}
}
