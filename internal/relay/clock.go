package relay

import (
	"context"
	"time"
)

// Clock is the time the engine paces and pauses by. Production uses the
// wall clock; tests run the engine and the fake Office 365 on one
// compressed clock, so minutes of pacing pass in seconds and both sides
// agree on every rolling window.
type Clock interface {
	Now() time.Time
	// After is time.After measured on this clock.
	After(d time.Duration) <-chan time.Time
}

// WallClock is the real time.
type WallClock struct{}

func (WallClock) Now() time.Time                         { return time.Now() }
func (WallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// sleepOn waits d on clk; it returns false if ctx ended first, and early
// (true) when wake fires.
func sleepOn(ctx context.Context, clk Clock, d time.Duration, wake <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-clk.After(d):
	case <-wake:
	}
	return true
}
