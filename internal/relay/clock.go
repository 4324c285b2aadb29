package relay

import (
	"context"
	"time"

	"relay365/internal/clock"
)

// wall is the real time, for waits that are about NATS or the lane's own
// bookkeeping rather than Office 365's windows (those use Engine.clock).
var wall = clock.Real()

// sleepOn waits d on clk; it returns false if ctx ended first, and early
// (true) when wake fires.
func sleepOn(ctx context.Context, clk clock.Clock, d time.Duration, wake <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
	case <-wake:
	}
	return true
}
