package clock

import (
	"context"
	"testing"
	"time"
)

func TestFakeTimers(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	a := f.NewTimer(time.Minute)
	b := f.NewTimer(time.Hour)
	c := f.NewTimer(0)
	select {
	case got := <-c.C():
		if !got.Equal(t0) {
			t.Fatalf("zero timer fired at %v", got)
		}
	default:
		t.Fatal("a timer whose deadline has passed must fire at once")
	}
	if p := f.Pending(); len(p) != 2 || !p[0].Equal(t0.Add(time.Minute)) || !p[1].Equal(t0.Add(time.Hour)) {
		t.Fatalf("pending %v", p)
	}
	f.Advance(59 * time.Second)
	select {
	case <-a.C():
		t.Fatal("fired early")
	default:
	}
	f.Advance(time.Second)
	select {
	case got := <-a.C():
		if !got.Equal(t0.Add(time.Minute)) {
			t.Fatalf("fired with %v", got)
		}
	default:
		t.Fatal("did not fire at its deadline")
	}
	if !b.Stop() || b.Stop() {
		t.Fatal("Stop must report true once for a pending timer")
	}
	f.Set(t0.Add(2 * time.Hour))
	select {
	case <-b.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	f.Set(t0) // never backwards
	if !f.Now().Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("clock went backwards to %v", f.Now())
	}
}

func TestFakeWaitTimer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan time.Time, 1)
	go func() {
		d, err := f.WaitTimer(ctx, func(d time.Time) bool { return d.After(t0.Add(time.Minute)) })
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	f.NewTimer(time.Second) // does not satisfy the predicate
	f.NewTimer(time.Hour)
	if d := <-got; !d.Equal(t0.Add(time.Hour)) {
		t.Fatalf("WaitTimer returned %v", d)
	}
	short, cancelShort := context.WithCancel(ctx)
	cancelShort()
	if _, err := f.WaitTimer(short, func(time.Time) bool { return false }); err == nil {
		t.Fatal("WaitTimer must end with its context")
	}
}

func TestRealTimer(t *testing.T) {
	r := Real()
	if d := time.Since(r.Now()); d < 0 || d > time.Minute {
		t.Fatalf("Real().Now() is off by %v", d)
	}
	tm := r.NewTimer(time.Millisecond)
	select {
	case <-tm.C():
	case <-time.After(10 * time.Second):
		t.Fatal("real timer did not fire")
	}
	if r.NewTimer(time.Hour).Stop() != true {
		t.Fatal("stopping a pending real timer reports true")
	}
}
