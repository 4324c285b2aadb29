package clock

import "time"

// Compressed is a real clock that runs Factor times faster than the wall
// clock from the moment it is made: a minute of pacing passes in half a
// second at 120. Unlike Fake it moves by itself, so a whole relay — the
// engine's pacer and the fake Office 365's limits (its Now serves as
// fakeo365.Config.Now) — runs on it unattended and both sides agree on
// every rolling window.
type Compressed struct {
	Factor float64
	start  time.Time // wall
	base   time.Time // what Now said at start
}

// NewCompressed starts a compressed clock at the current time.
func NewCompressed(factor float64) *Compressed {
	now := time.Now()
	return &Compressed{Factor: factor, start: now, base: now}
}

// Now is the compressed time.
func (c *Compressed) Now() time.Time {
	return c.base.Add(time.Duration(float64(time.Since(c.start)) * c.Factor))
}

// NewTimer fires once d of compressed time has passed.
func (c *Compressed) NewTimer(d time.Duration) Timer {
	t := &compressedTimer{c: make(chan time.Time, 1)}
	t.t = time.AfterFunc(time.Duration(float64(d)/c.Factor), func() { t.c <- c.Now() })
	return t
}

type compressedTimer struct {
	t *time.Timer
	c chan time.Time
}

func (t *compressedTimer) C() <-chan time.Time { return t.c }
func (t *compressedTimer) Stop() bool          { return t.t.Stop() }
