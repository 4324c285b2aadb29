package pacing_test

import (
	"fmt"
	"testing"
	"time"

	"relay365/internal/pacing"
)

// TestDayRoom: for a mailbox Office 365 reports over its day's quota, the
// pacer says when the 24-hour window has room: when the oldest recipients
// it counts have left it (their ten-minute slot's end plus 24 hours), not
// sooner and, whatever the record holds, never more than a day and a slot
// away; with nothing counted there is nothing to compute from.
func TestDayRoom(t *testing.T) {
	pt := newPacerTest(t)
	ctx, clock, p := pt.ctx, pt.clock, pt.open()
	const mbx = "alerts@contoso.com"
	if _, ok, err := p.DayRoom(ctx, mbx); ok || err != nil {
		t.Fatalf("no record: ok %v, %v; want nothing to compute from", ok, err)
	}
	start := clock.Now()                          // 09:00, a slot's start
	if err := p.Record(ctx, mbx, 3); err != nil { // counted in 09:00-09:10
		t.Fatal(err)
	}
	clock.Advance(2*time.Hour + 5*time.Minute)
	if err := p.Record(ctx, mbx, 5); err != nil { // 11:00-11:10
		t.Fatal(err)
	}
	want := start.Add(10*time.Minute + 24*time.Hour).Sub(clock.Now())
	if wait, ok, err := p.DayRoom(ctx, mbx); !ok || err != nil || wait != want {
		t.Fatalf("DayRoom = %s, %v, %v; want %s (the 09:00 slot leaves the day at 09:10 tomorrow)", wait, ok, err, want)
	}
	clock.Set(start.Add(10*time.Minute + 24*time.Hour)) // the first slot has left
	if wait, ok, _ := p.DayRoom(ctx, mbx); !ok || wait != 2*time.Hour {
		t.Fatalf("after the oldest slot left: DayRoom = %s, %v; want 2h (the 11:00 slot)", wait, ok)
	}
	clock.Advance(2 * time.Hour)
	if wait, ok, _ := p.DayRoom(ctx, mbx); ok {
		t.Fatalf("everything left the window: DayRoom = %s, want nothing to compute from", wait)
	}

	// A record stamped ten days ahead (a corrupt value, a worker's clock
	// far ahead) holds the mailbox at most a day and a slot.
	kv, err := pt.js.KeyValue(ctx, pacing.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	ahead := clock.Now().Add(240 * time.Hour).Truncate(10 * time.Minute).Unix()
	if _, err := kv.Put(ctx, "ahead=contoso.com", fmt.Appendf(nil, `{"rcpts":[{"t":%d,"n":1}]}`, ahead)); err != nil {
		t.Fatal(err)
	}
	if wait, ok, _ := p.DayRoom(ctx, "ahead@contoso.com"); !ok || wait != pacing.MaxDayRoom {
		t.Fatalf("a slot ten days ahead: DayRoom = %s, %v; want %s", wait, ok, pacing.MaxDayRoom)
	}
}
