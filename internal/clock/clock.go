// Package clock is the one time source of Relay365: the token service's
// refresh schedule, the delivery engine's pacing and pauses, and the fake
// Office 365 all read it. Production code uses Real. Tests use a Fake they
// move forward by hand, so token lifetimes, refresh margins, backoffs and
// a whole simulated year run in seconds without sleeping, or a Compressed
// clock that runs many times faster than the wall, so minutes of pacing
// pass in seconds for a relay running unattended.
//
// # Design
//
// Only what the schedulers need: Now, and a one-shot Timer whose
// channel receives once the clock has reached the deadline. A Fake fires a
// timer during the Advance/Set that reaches its deadline, and a timer
// created with a deadline already reached fires at once, so a scheduler
// that computes "sleep until T" from a stale reading never waits forever.
// Fake.WaitTimer lets a test wait (with a deadline, never a sleep) until the
// code under test is parked on a timer, which is how a test knows the
// scheduler has finished reacting to the last step.
package clock

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Clock is a source of time and timers.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once d has passed on this clock.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer.
type Timer interface {
	// C receives the clock's time once the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// Real is the wall clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(d)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Fake is a manually driven clock for tests. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	changed chan struct{} // closed and replaced whenever timers change
}

// NewFake returns a fake clock reading t.
func NewFake(t time.Time) *Fake {
	return &Fake{now: t, changed: make(chan struct{})}
}

// Now is the fake's current time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer firing when the fake reaches Now()+d; with d <= 0
// it has already fired.
func (f *Fake) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{f: f, at: f.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- f.now
		return t
	}
	f.timers = append(f.timers, t)
	f.notifyLocked()
	return t
}

// Advance moves the clock forward by d, firing the timers it passes.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the clock to t (never backwards), firing the timers it passes.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.Before(f.now) {
		return
	}
	f.now = t
	kept := f.timers[:0]
	for _, tm := range f.timers {
		if tm.at.After(t) {
			kept = append(kept, tm)
			continue
		}
		tm.c <- t
	}
	clear(f.timers[len(kept):])
	f.timers = kept
	f.notifyLocked()
}

// Pending returns the deadlines of the timers not yet fired, earliest first.
func (f *Fake) Pending() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Time, len(f.timers))
	for i, t := range f.timers {
		out[i] = t.at
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// WaitTimer waits until a pending timer satisfies ok (nil: any timer) and
// returns its deadline, the earliest such. It fails only when ctx ends.
func (f *Fake) WaitTimer(ctx context.Context, ok func(deadline time.Time) bool) (time.Time, error) {
	for {
		f.mu.Lock()
		ch := f.changed
		var best time.Time
		for _, t := range f.timers {
			if (ok == nil || ok(t.at)) && (best.IsZero() || t.at.Before(best)) {
				best = t.at
			}
		}
		f.mu.Unlock()
		if !best.IsZero() {
			return best, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

func (f *Fake) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakeTimer struct {
	f  *Fake
	at time.Time
	c  chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	for i, x := range t.f.timers {
		if x == t {
			t.f.timers = append(t.f.timers[:i], t.f.timers[i+1:]...)
			t.f.notifyLocked()
			return true
		}
	}
	return false
}
