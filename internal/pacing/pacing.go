// Package pacing keeps Office 365's per-mailbox sending limits from the
// relay's side, in KV bucket relay_pacing shared by every process that
// sends as a mailbox: the delivery engine (internal/relay), which reserves
// before each transaction, and the consent step (authtool, the sandbox),
// which records its test mails. How the windows are counted, written
// and shared is on Pacer.
package pacing

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/clock"
	"relay365/internal/queue"
)

// Bucket is the KV bucket with each mailbox's recent sends.
const Bucket = "relay_pacing"

// The rolling windows of Office 365's limits (docs/office365.md §3) and the
// slots the pacer counts them in. Counting in slots is conservative: a
// slot counts until its end has left the window, so the pacer never sees
// fewer sends than Office 365 does.
//
// A slot of the minute window whose every message this process has seen
// accepted counts, in this process, only until the last acceptance has
// left the window (paceSlot.L, to the millisecond), not until the slot's
// end. A mailbox offered exactly its 30 a minute would otherwise wait,
// from its 31st message on, for the rest of the second in which the
// message 30 before was accepted, and that wait would carry into the next
// minute and grow by as much again (at the limit, a backlog that never
// drains). Counted to the acceptance, a message waits only for the
// transaction time of the one 30 before it.
const (
	minuteWindow = time.Minute
	minuteSlot   = time.Second
	dayWindow    = 24 * time.Hour
	daySlot      = 10 * time.Minute
)

// casAttempts bounds the compare-and-set retries of one pacer update.
const casAttempts = 50

// Limits are one mailbox's budgets; 0 or less means no limit.
type Limits struct {
	PerMinute int // messages (transactions) per rolling minute
	PerDay    int // recipients per rolling 24 hours
}

// Pacer keeps Office 365's per-mailbox limits from the relay's side, so
// the fake (and Office 365) never has to answer 432 or a quota error.
//
// Every transaction reserves one message and its recipients before it
// starts (Reserve), the engine moves it to now while the transaction runs
// (Restamp, every 30 s), then, after the 250, moves the reservation to the time
// of acceptance (Confirm) — later than Office 365's own timestamp, so the
// pacer's windows always contain Office 365's. A definite refusal gives
// the reservation back (Release); a lost connection keeps it and moves it
// to that moment too (Confirm), since the server may have counted it.
//
// The counts live in KV bucket relay_pacing, one key per mailbox, updated
// with compare-and-set: a restart or a second worker continues the same
// windows. Keys expire a day after their last write, when nothing in them
// counts any more.
//
// Within a process the updates of one mailbox are group-committed: the
// sessions of a lane reserve and confirm concurrently, and instead of each
// reading the key and racing the others' compare-and-set (which at 16
// sessions lost most races and retried), the updates waiting while one
// write is in flight are applied together, in arrival order, and written
// with one compare-and-set. The process remembers the record and revision
// it last read or wrote, so an update needs no read first; a lost
// compare-and-set (another process wrote) reads the key again and applies
// the batch again. A Reserve refused on the remembered record writes
// nothing, so no compare-and-set can tell it another process released or
// the key was deleted: it reads the key once and applies the batch again
// before refusing. Every update still reaches the KV before its caller
// goes on. A batch is written under the context of the caller that
// writes it; if that one ends (a lane stopping) the batch fails: a failed
// Release leaves the reservation counting, a failed Reserve reserves
// nothing, and a failed Confirm leaves the reservation counting from
// where it was made, which falls short of Office 365's count by whatever
// of the transaction outlasted the second it was reserved in (the one
// case where the pacer can count less than Office 365; the process is
// then stopping or has lost NATS). Peek reads the remembered record when
// it is under peekFresh old, without waiting for a commit in flight: Peek
// only sizes a fetch, Reserve decides.
type Pacer struct {
	kv jetstream.KeyValue
	// leader reads the records from the bucket's stream leader, never by
	// a direct get: see get and landed.
	leader *queue.LeaderReader
	clock  clock.Clock
	peeks  atomic.Int64 // Peek calls (Peeks)

	mu    sync.Mutex
	boxes map[string]*paceState
}

// peekFresh is how old a remembered record may be for Peek.
const peekFresh = time.Second

// paceState is one mailbox's record as this process last read or wrote
// it, and the updates waiting for the next write.
type paceState struct {
	mu    sync.Mutex // guards rec, rev, known; held for a whole commit
	rec   paceRecord
	rev   uint64
	known bool // rec and rev are current as far as this process knows

	// seen is the newest record read or written, for Peek. It has a lock
	// of its own so that Peek, which sizes the lane's next fetch, never
	// waits for a commit in flight (a KV write, an fsync under sync
	// always) before the fetch can go out.
	smu  sync.Mutex
	seen paceSeen

	qmu     sync.Mutex // guards queue and writing
	queue   []*paceOp
	writing bool // a goroutine is committing; it will take the queue too

	// accepted counts, per minute slot (its start, Unix seconds), the
	// messages this process confirmed there and the last acceptance, in
	// the record of lineage epoch (paceRecord.E).
	amu      sync.Mutex
	epoch    string
	accepted map[int64]acceptedSlot
}

// acceptedSlot is what this process confirmed in one minute slot.
type acceptedSlot struct {
	n    int
	last int64 // Unix milliseconds, rounded up
}

// accept notes a confirmation at t (on the pacer's clock) of a message
// counted in the record of lineage epoch, and forgets slots that no
// longer count anywhere. Confirmations in another lineage are forgotten:
// the record they were counted in is gone.
func (st *paceState) accept(epoch string, t time.Time) {
	st.amu.Lock()
	defer st.amu.Unlock()
	if st.accepted == nil || st.epoch != epoch {
		st.accepted, st.epoch = map[int64]acceptedSlot{}, epoch
	}
	for start := range st.accepted {
		if !perMinute.exit(paceSlot{T: start}).After(t) {
			delete(st.accepted, start)
		}
	}
	start := t.Truncate(minuteSlot).Unix()
	a := st.accepted[start]
	st.accepted[start] = acceptedSlot{n: a.n + 1, last: max(a.last, lastMilli(t))}
}

// refine counts each minute slot of r whose every message this process
// confirmed until its last acceptance (see paceSlot). A slot's count
// equal to the confirmations means nobody else added to it: what others
// add, and reservations not yet accepted, count in N too. That holds only
// within one lineage of the record: a record deleted or replaced (an
// operator, an unreadable value) and made again holds others' messages
// where this process's were, so its confirmations count only in r if r
// is the record they were counted in.
func (st *paceState) refine(r *paceRecord) {
	st.amu.Lock()
	defer st.amu.Unlock()
	if r.E == "" || r.E != st.epoch {
		return
	}
	for i, s := range r.Msgs {
		if a, ok := st.accepted[s.T]; ok && s.N > 0 && a.n == s.N {
			r.Msgs[i].L = a.last
		}
	}
}

// paceSeen is a record with its revision and the wall time it was read
// or written.
type paceSeen struct {
	rec paceRecord
	rev uint64
	at  time.Time
}

// remember keeps r as the record Peek sees unless a newer revision is
// kept already and still fresh (revision 0 means the key was not found;
// the freshness fallback also covers a recreated bucket). r is never
// modified afterwards (commit works on copies).
func (st *paceState) remember(r paceRecord, rev uint64) {
	st.smu.Lock()
	if rev >= st.seen.rev || time.Since(st.seen.at) >= peekFresh {
		st.seen = paceSeen{rec: r, rev: rev, at: time.Now()}
	}
	st.smu.Unlock()
}

// paceOp is one waiting update.
type paceOp struct {
	fn   func(r *paceRecord, now time.Time) outcome
	done chan error
}

// outcome is what an update made of the record.
type outcome int

const (
	keep   outcome = iota // nothing to write
	write                 // changed: write it
	refuse                // nothing to write, but a refusal that holds only if the record is current
)

// Open creates the bucket if needed.
func Open(ctx context.Context, js jetstream.JetStream, clk clock.Clock) (*Pacer, error) {
	kv, err := queue.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Relay365 per-mailbox sending counts (Office 365 limits)",
		History:     1,
		TTL:         dayWindow + time.Hour,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open pacing bucket %s: %w", Bucket, err)
	}
	if clk == nil {
		clk = clock.Real()
	}
	return &Pacer{kv: kv, leader: queue.NewLeaderReader(js, Bucket), clock: clk, boxes: map[string]*paceState{}}, nil
}

// Ticket is one reservation.
type Ticket struct {
	mailbox string
	at      time.Time
	rcpts   int
	epoch   string // the lineage of the record it is counted in (paceRecord.E)
}

// At is when the reservation counts: when it was made, or moved last.
func (t Ticket) At() time.Time { return t.at }

// paceSlot counts what happened in the slot starting at T (Unix seconds).
//
// L, when set, is the last acceptance (Unix milliseconds, rounded up) of
// everything the slot counts, and the slot counts until L, not its end,
// has left the window. Only a process that confirmed every message in the
// slot sets it (Pacer.refine), and it then travels in that process's next
// write. L lies within the slot, so a worker that does not know the field
// (an older version, which also drops it when it rewrites the record)
// counts the slot until its end: longer, never shorter. Anything added to
// a slot clears it.
type paceSlot struct {
	T int64 `json:"t"`
	N int   `json:"n"`
	L int64 `json:"l,omitempty"`
}

// lastMilli is t in Unix milliseconds, rounded up: a moment counted to the
// millisecond is never counted shorter than it happened.
func lastMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return ms
}

// paceRecord is the stored value: messages per second over the last
// minute, recipients per ten minutes over the last day.
//
// E names the record's lineage: drawn when the record is written without
// one (new, made again after its key was deleted, replaced after an
// unreadable value, or rewritten by an older version, which drops it).
// A process's confirmations refine only the lineage they were counted in.
type paceRecord struct {
	E     string     `json:"e,omitempty"`
	Msgs  []paceSlot `json:"msgs,omitempty"`
	Rcpts []paceSlot `json:"rcpts,omitempty"`
}

// newEpoch draws a record lineage: unique, not secret.
func newEpoch() string { return strconv.FormatUint(rand.Uint64(), 36) }

type window struct {
	slot, span time.Duration
}

var (
	perMinute = window{slot: minuteSlot, span: minuteWindow}
	perDay    = window{slot: daySlot, span: dayWindow}
)

// sameSlot says whether a and b are counted in the same slot.
func (w window) sameSlot(a, b time.Time) bool { return a.Truncate(w.slot).Equal(b.Truncate(w.slot)) }

// exit is when a slot stops counting.
//
// L counts only where it lies within the slot, as paceSlot promises: a
// stored record is read from the bucket, and an L past the slot (a
// corrupt record) would otherwise keep the slot counting for as long as
// it says, pausing the mailbox for days; ignored, the slot counts to its
// end, which is never shorter than the truth.
func (w window) exit(s paceSlot) time.Time {
	end := time.Unix(s.T, 0).Add(w.slot)
	if s.L > 0 {
		if l := time.UnixMilli(s.L); !l.Before(time.Unix(s.T, 0)) && !l.After(end) {
			return l.Add(w.span)
		}
	}
	return end.Add(w.span)
}

func (w window) prune(slots []paceSlot, now time.Time) []paceSlot {
	return slices.DeleteFunc(slots, func(s paceSlot) bool { return !w.exit(s).After(now) || s.N <= 0 })
}

// total counts the slots still in the window. The record is read from the
// bucket, where any process (or an operator) may have written it: a count
// below zero counts nothing, and the sum stops at math.MaxInt instead of
// wrapping, as three slots of a corrupt record could make it wrap to a
// small number (2*MaxInt+2 is 0) and grant everything.
func (w window) total(slots []paceSlot, now time.Time) int {
	n := 0
	for _, s := range slots {
		if w.exit(s).After(now) && s.N > 0 {
			n += min(s.N, math.MaxInt-n)
		}
	}
	return n
}

// add adds n (which may be negative) to the slot holding t.
func (w window) add(slots []paceSlot, t time.Time, n int) []paceSlot {
	start := t.Truncate(w.slot).Unix()
	i, found := slices.BinarySearchFunc(slots, start, func(s paceSlot, t int64) int { return int(s.T - t) })
	if found {
		if n > 0 {
			slots[i].L = 0 // not accepted yet: counted to the slot's end
		}
		// Saturating: a count near math.MaxInt (a corrupt record) must
		// not wrap to below zero and count nothing.
		switch {
		case n > 0 && slots[i].N > math.MaxInt-n:
			slots[i].N = math.MaxInt
		default:
			slots[i].N = max(0, slots[i].N+n)
		}
		return slots
	}
	if n <= 0 {
		return slots
	}
	return slices.Insert(slots, i, paceSlot{T: start, N: n})
}

// room is how long until total+need fits within limit (0: it fits now).
func (w window) room(slots []paceSlot, now time.Time, limit, need int) time.Duration {
	if limit <= 0 {
		return 0
	}
	// Compared without total+need, which a corrupt record's count near
	// math.MaxInt would make wrap.
	total := w.total(slots, now)
	if total <= limit-need {
		return 0
	}
	if need > limit {
		return w.span // more than the whole budget: never; callers keep batches smaller
	}
	// over is within (0, total]; slots are sorted oldest first.
	over := total - (limit - need)
	for _, s := range slots {
		if over <= 0 {
			break
		}
		if exit := w.exit(s); exit.After(now) && s.N > 0 {
			over -= s.N
			if over <= 0 {
				return exit.Sub(now)
			}
		}
	}
	if over > 0 {
		return w.span // more than the whole budget: never; callers keep batches smaller
	}
	return 0
}

// Peeks is how many times Peek was called: a lane waiting for the pacer
// or a slot must not ask in a loop (the engine's tests count them).
func (p *Pacer) Peeks() int64 { return p.peeks.Load() }

// Peek says how many transactions may start now under the per-minute
// budget (and none if the day's recipients are spent), and if none, how
// long until one may. It does not reserve anything.
func (p *Pacer) Peek(ctx context.Context, mailbox string, lim Limits) (allow int, wait time.Duration, err error) {
	p.peeks.Add(1)
	st := p.state(mailbox)
	r, err := p.peekRecord(ctx, mailbox, st)
	if err != nil {
		return 0, 0, err
	}
	r.Msgs = slices.Clone(r.Msgs) // the remembered record is shared
	st.refine(&r)
	now := p.clock.Now()
	allow = 1 << 30
	if lim.PerMinute > 0 {
		allow = lim.PerMinute - perMinute.total(r.Msgs, now)
	}
	if allow <= 0 {
		wait = perMinute.room(r.Msgs, now, lim.PerMinute, 1)
	}
	if d := perDay.room(r.Rcpts, now, lim.PerDay, 1); d > 0 {
		allow, wait = 0, max(wait, d)
	} else if lim.PerDay > 0 {
		// Every message has a recipient: no more messages than the
		// day's recipients left (a lane fetches ahead by this).
		allow = min(allow, lim.PerDay-perDay.total(r.Rcpts, now))
	}
	return max(allow, 0), wait, nil
}

// MaxDayRoom bounds DayRoom: no slot of the day window counts longer than
// the window and the slot it ends in.
const MaxDayRoom = dayWindow + daySlot

// DayRoom says, for a mailbox whose day's budget Office 365 reports spent
// (the quota reply, docs/office365.md §4), how long until its window has
// room: until the oldest recipients the record counts have left the
// rolling 24 hours. The record counts each of the relay's sends at least
// as long as Office 365 does and at most a slot (ten minutes) longer (see
// Pacer), so by then the oldest of them has left Office 365's window too;
// mail sent by other means, which the record does not hold, may have left
// it sooner, which this cannot see.
// ok is false when the record counts no recipient (the budget was spent
// by other means, or the record is gone): there is nothing to compute
// from. The wait is at most MaxDayRoom, whatever the record says (a slot
// stamped in the future by a corrupt record or a clock far ahead counts
// no longer than a day).
func (p *Pacer) DayRoom(ctx context.Context, mailbox string) (wait time.Duration, ok bool, err error) {
	r, _, err := p.get(ctx, mailbox)
	if err != nil {
		return 0, false, err
	}
	now := p.clock.Now()
	for _, s := range r.Rcpts {
		if exit := perDay.exit(s); s.N > 0 && exit.After(now) && (!ok || exit.Sub(now) < wait) {
			wait, ok = exit.Sub(now), true
		}
	}
	return min(wait, MaxDayRoom), ok, nil
}

// Reserve takes one message and rcpts recipients from the budgets, or, if
// they do not fit now, reserves nothing and says how long until they do.
func (p *Pacer) Reserve(ctx context.Context, mailbox string, rcpts int, lim Limits) (Ticket, time.Duration, error) {
	var t Ticket
	var wait time.Duration
	err := p.update(ctx, mailbox, func(r *paceRecord, now time.Time) outcome {
		wait = max(perMinute.room(r.Msgs, now, lim.PerMinute, 1), perDay.room(r.Rcpts, now, lim.PerDay, rcpts))
		if wait > 0 {
			return refuse
		}
		r.Msgs = perMinute.add(r.Msgs, now, 1)
		r.Rcpts = perDay.add(r.Rcpts, now, rcpts)
		t = Ticket{mailbox: mailbox, at: now, rcpts: rcpts, epoch: r.E}
		return write
	})
	return t, wait, err
}

// Record counts a message of rcpts recipients that Office 365 accepted
// just now outside the relay's sessions (authtool's consent and test
// mails): Office 365 counts it, so the budget must, whatever room is left.
func (p *Pacer) Record(ctx context.Context, mailbox string, rcpts int) error {
	return p.update(ctx, mailbox, func(r *paceRecord, now time.Time) outcome {
		r.Msgs = perMinute.add(r.Msgs, now, 1)
		r.Rcpts = perDay.add(r.Rcpts, now, rcpts)
		return write
	})
}

// Confirm moves a reservation to now, after Office 365 accepted the
// transaction. Accepted within the slots it was reserved in (the same
// second, the same ten minutes), the record would not change, and nothing
// is written.
func (p *Pacer) Confirm(ctx context.Context, t Ticket) error {
	moved, err := p.Restamp(ctx, t)
	if err == nil {
		p.state(t.mailbox).accept(moved.epoch, moved.at)
	}
	return err
}

// Restamp moves a reservation to now and returns it moved (Confirm is
// Restamp after the 250). Before a transaction it serves a message that
// waited, so its reservation does not age out of the minute window first;
// t must then be under a minute old (counted in every window that holds
// now already, so moving it keeps every limit). On error t is unchanged.
func (p *Pacer) Restamp(ctx context.Context, t Ticket) (Ticket, error) {
	var moved Ticket
	err := p.update(ctx, t.mailbox, func(r *paceRecord, now time.Time) outcome {
		moved = Ticket{mailbox: t.mailbox, at: now, rcpts: t.rcpts, epoch: t.epoch}
		if perMinute.sameSlot(t.at, now) && perDay.sameSlot(t.at, now) {
			return keep // still counted where it was, in t's lineage
		}
		moved.epoch = r.E
		r.Msgs = perMinute.add(perMinute.add(r.Msgs, t.at, -1), now, 1)
		r.Rcpts = perDay.add(perDay.add(r.Rcpts, t.at, -t.rcpts), now, t.rcpts)
		return write
	})
	if err != nil {
		return t, err
	}
	return moved, nil
}

// Release gives a reservation back after a definite refusal.
func (p *Pacer) Release(ctx context.Context, t Ticket) error {
	return p.update(ctx, t.mailbox, func(r *paceRecord, now time.Time) outcome {
		r.Msgs = perMinute.add(r.Msgs, t.at, -1)
		r.Rcpts = perDay.add(r.Rcpts, t.at, -t.rcpts)
		return write
	})
}

// get reads mailbox's record and its revision from the bucket's stream
// leader (queue.LeaderReader), not by a direct get, which a replica
// restarted after an outage answers before it has caught up. An old
// record would only lose the compare-and-set of a write, but a refusal
// writes nothing: read from such a replica, a day window full of
// reservations given back (or a key deleted) during the outage refused
// the mailbox, and its account waited, for as long as that old record
// said (docs/design.md §7.10).
func (p *Pacer) get(ctx context.Context, mailbox string) (paceRecord, uint64, error) {
	var r paceRecord
	v, rev, found, err := p.leader.Last(ctx, pacingKey(mailbox))
	if err != nil {
		return r, 0, fmt.Errorf("read pacing of %s: %w", mailbox, err)
	}
	if !found {
		// Never written, or deleted: a Create (kv.Create writes over a
		// deletion marker).
		return r, 0, nil
	}
	if err := json.Unmarshal(v, &r); err != nil {
		// A record we cannot read is replaced; counting restarts, which
		// Office 365's own limits then backstop.
		return paceRecord{}, rev, nil
	}
	return r, rev, nil
}

// peekRecord is the remembered record if it is fresh, else the stored one.
func (p *Pacer) peekRecord(ctx context.Context, mailbox string, st *paceState) (paceRecord, error) {
	st.smu.Lock()
	seen := st.seen
	st.smu.Unlock()
	if !seen.at.IsZero() && time.Since(seen.at) < peekFresh {
		return seen.rec, nil
	}
	r, rev, err := p.get(ctx, mailbox)
	if err != nil {
		return r, err
	}
	st.remember(r, rev)
	return r, nil
}

func (p *Pacer) state(mailbox string) *paceState {
	key := pacingKey(mailbox)
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.boxes[key]
	if !ok {
		st = &paceState{}
		p.boxes[key] = st
	}
	return st
}

// update applies fn to the current record with compare-and-set. fn
// returns keep or refuse to leave the record as it is (refuse when the
// decision holds only for the current record); it may run more than once
// (after a lost compare-and-set) and must not keep state between runs.
// Concurrent updates of one mailbox are written together (see Pacer).
func (p *Pacer) update(ctx context.Context, mailbox string, fn func(r *paceRecord, now time.Time) outcome) error {
	st := p.state(mailbox)
	op := &paceOp{fn: fn, done: make(chan error, 1)}
	st.qmu.Lock()
	st.queue = append(st.queue, op)
	lead := !st.writing
	st.writing = true
	st.qmu.Unlock()
	if lead {
		// This caller writes until the queue is empty, its own update in
		// the first batch.
		for {
			st.qmu.Lock()
			ops := st.queue
			st.queue = nil
			if len(ops) == 0 {
				st.writing = false
				st.qmu.Unlock()
				break
			}
			st.qmu.Unlock()
			err := p.commit(ctx, mailbox, st, ops)
			for _, o := range ops {
				o.done <- err
			}
		}
	}
	return <-op.done
}

// commit applies ops, in order, to the record and writes it once,
// retrying when another process wrote in between.
func (p *Pacer) commit(ctx context.Context, mailbox string, st *paceState, ops []*paceOp) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	key := pacingKey(mailbox)
	for range casAttempts {
		read := !st.known
		if read {
			r, rev, err := p.get(ctx, mailbox)
			if err != nil {
				return err
			}
			st.rec, st.rev, st.known = r, rev, true
			st.remember(r, rev)
		}
		now := p.clock.Now()
		r := paceRecord{E: st.rec.E, Msgs: slices.Clone(st.rec.Msgs), Rcpts: perDay.prune(slices.Clone(st.rec.Rcpts), now)}
		if r.E == "" {
			r.E = newEpoch()
		}
		st.refine(&r)
		r.Msgs = perMinute.prune(r.Msgs, now)
		changed, refused := false, false
		for _, o := range ops {
			switch o.fn(&r, now) {
			case write:
				changed = true
			case refuse:
				refused = true
			}
		}
		if !changed && refused && !read {
			// A refusal writes nothing, so no lost compare-and-set
			// would tell this process that the record it remembers is
			// out of date: another process may have given reservations
			// back, or the key was deleted. Refused on a remembered
			// record, the key is read again and the batch applied
			// again; otherwise a worker refused for a day from a record
			// that had room (the account paused that long). A write
			// needs no such read: its compare-and-set checks the record.
			st.known = false
			continue
		}
		if !changed {
			return nil
		}
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		var rev uint64
		if st.rev == 0 {
			rev, err = p.kv.Create(ctx, key, b)
		} else {
			rev, err = p.kv.Update(ctx, key, b, st.rev)
		}
		if err != nil && !queue.CASLost(err) {
			// The outcome is unknown (no answer in time, the connection
			// lost): the server may have written the record and its
			// answer been lost. Taken as failed, a reservation that
			// counts would have no ticket to give it back by, and a
			// Restamp that moved one would leave its ticket where it was,
			// so that a later Release or Confirm took the count from
			// another reservation's slot: the pacer would count less than
			// Office 365 does. Read the key again and decide.
			if lrev, ok := p.landed(ctx, key, st.rev, b); ok {
				rev, err = lrev, nil
			}
		}
		if err == nil {
			st.rec, st.rev = r, rev
			st.remember(r, rev)
			return nil
		}
		st.known = false // read it again before the next try
		if !queue.CASLost(err) {
			return fmt.Errorf("write pacing of %s: %w", mailbox, err)
		}
	}
	return fmt.Errorf("write pacing of %s: %d compare-and-set races lost in a row", mailbox, casAttempts)
}

// landedWait bounds the read that decides a write of unknown outcome.
const landedWait = 5 * time.Second

// landed reports whether a write of b over revision prev (0: a Create),
// whose answer did not come, was made: the key holds exactly b, at the
// next revision. b carries the record's epoch and timestamps, so no
// other write makes the same bytes. When another write came after it,
// or the read fails too, it cannot tell and reports false: the write
// stays failed, as before.
//
// It reads the stream leader (queue.LeaderReader), never a direct get:
// the answer is often lost because the leader was (a server's loss or
// restart), and a replica not yet caught up, which a direct get may ask,
// lacks the write. A reservation so taken as failed counts with no
// ticket, and a Restamp so taken leaves its ticket in the wrong slot, for
// a later Release to take another reservation's count: the pacer would
// count less than Office 365 does and send over its limits (§7.10).
func (p *Pacer) landed(ctx context.Context, key string, prev uint64, b []byte) (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), landedWait)
	defer cancel()
	v, rev, found, err := p.leader.Last(ctx, key)
	if err != nil || !found || !bytes.Equal(v, b) || (prev != 0 && rev != prev+1) {
		return 0, false
	}
	return rev, true
}

// pacingKey makes a KV key of a mailbox address, readable and unique:
// lower case, '@' as '=', and bytes outside [a-z0-9.-] as _XX.
func pacingKey(mailbox string) string {
	var b strings.Builder
	for _, c := range []byte(strings.ToLower(mailbox)) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		case c == '@':
			b.WriteByte('=')
		default:
			b.WriteString("_" + strconv.FormatUint(uint64(c)|0x100, 16)[1:])
		}
	}
	return b.String()
}
