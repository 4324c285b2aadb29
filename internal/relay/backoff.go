package relay

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential retry schedule with jitter: attempt n
// (1-based) waits Base·2^(n-1), at most Max, then scaled by a random factor
// in [1-Jitter, 1+Jitter] so that messages failed together do not retry
// together. With the defaults (10s, 10m, 0.2) the waits are about
// 10s 20s 40s 80s 160s 320s 600s 600s …
type Backoff struct {
	Base   time.Duration
	Max    time.Duration
	Jitter float64
}

// DefaultRetry is the schedule for temporary failures.
var DefaultRetry = Backoff{Base: 10 * time.Second, Max: 10 * time.Minute, Jitter: 0.2}

// DefaultPause is the probe schedule for an account that cannot send at all
// (needs consent, SMTP AUTH disabled, tenant blocked, quota): slower, since
// only a person or the quota window fixes it.
var DefaultPause = Backoff{Base: time.Minute, Max: 15 * time.Minute, Jitter: 0.2}

// Delay returns the wait before attempt+1.
func (b Backoff) Delay(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := b.Base
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	if d > b.Max {
		d = b.Max
	}
	if b.Jitter > 0 {
		f := 1 + b.Jitter*(2*rand.Float64()-1)
		d = time.Duration(float64(d) * f)
	}
	return d
}

// Validate says what is wrong with a schedule given by flags; name is the
// flag prefix, e.g. "--retry".
func (b Backoff) Validate(name string) error {
	switch {
	case b.Base < 10*time.Millisecond:
		return fmt.Errorf("%s-base %s: want at least 10ms (a shorter wait is a hot loop)", name, b.Base)
	case b.Max < b.Base:
		return fmt.Errorf("%s-max %s: want at least %s-base (%s)", name, b.Max, name, b.Base)
	case b.Jitter < 0 || b.Jitter >= 1:
		return fmt.Errorf("%s jitter %g: want 0 to under 1", name, b.Jitter)
	}
	return nil
}
