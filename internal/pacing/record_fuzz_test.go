package pacing

import (
	"encoding/json"
	"math"
	"slices"
	"testing"
	"time"
)

// FuzzPaceRecord: the record in relay_pacing is written by other
// processes (other workers, authtool, older versions) and read back with
// json.Unmarshal. Whatever it holds, reading and using it as commit and
// Reserve do never panics, a wait is within [0, the window], and a
// reservation granted on it keeps the minute's messages and the day's
// recipients within their limits (counted as the pacer counts them).
func FuzzPaceRecord(f *testing.F) {
	now := time.Date(2026, 11, 27, 10, 0, 30, 500_000_000, time.UTC)
	s := now.Unix()
	for _, v := range []string{
		`{}`, `null`, `[]`, `{"e":"abc"}`,
		`{"e":"k3","msgs":[{"t":` + itoa(s-59) + `,"n":10},{"t":` + itoa(s) + `,"n":19,"l":` + itoa(now.UnixMilli()) + `}],"rcpts":[{"t":` + itoa(s-600) + `,"n":9000}]}`,
		`{"msgs":[{"t":` + itoa(s) + `,"n":1},{"t":` + itoa(s-1) + `,"n":1},{"t":` + itoa(s) + `,"n":1}]}`, // unsorted, twice
		`{"msgs":[{"t":` + itoa(s) + `,"n":-5}],"rcpts":[{"t":` + itoa(s) + `,"n":-10000}]}`,
		`{"msgs":[{"t":-9223372036854775808,"n":1},{"t":9223372036854775807,"n":1}]}`,
		`{"msgs":[{"t":` + itoa(s) + `,"n":1,"l":-1},{"t":` + itoa(s) + `,"n":1,"l":9223372036854775807}]}`,
		`{"rcpts":[{"t":` + itoa(s) + `,"n":9223372036854775807},{"t":` + itoa(s) + `,"n":1}]}`,
		// Three counts that summed to 2^64, 0 in an int: granted everything.
		`{"rcpts":[{"t":` + itoa(s-1200) + `,"n":9223372036854775807},{"t":` + itoa(s-600) + `,"n":9223372036854775807},{"t":` + itoa(s) + `,"n":2}]}`,
		`{"msgs":"x"}`, `{"msgs":[{"t":1.5}]}`,
	} {
		f.Add([]byte(v), 30, 10000, 3)
	}
	f.Fuzz(func(t *testing.T, b []byte, perMin, perDayLim, rcpts int) {
		var r paceRecord
		if err := json.Unmarshal(b, &r); err != nil {
			return // replaced, as Pacer.get does
		}
		rcpts = max(rcpts%500, 1)
		lim := Limits{PerMinute: perMin % 100, PerDay: perDayLim % 20000}

		// As commit prepares it.
		r.Rcpts = perDay.prune(slices.Clone(r.Rcpts), now)
		r.Msgs = perMinute.prune(slices.Clone(r.Msgs), now)
		for _, sl := range append(slices.Clone(r.Msgs), r.Rcpts...) {
			if sl.N <= 0 {
				t.Fatalf("prune kept %+v", sl)
			}
		}
		// What the pruned record counts, as the pacer counts it.
		msgs, day := trueTotal(perMinute, r.Msgs, now), trueTotal(perDay, r.Rcpts, now)
		if msgs != perMinute.total(r.Msgs, now) || day != perDay.total(r.Rcpts, now) {
			t.Fatalf("totals %d, %d; counted without overflow %d, %d", perMinute.total(r.Msgs, now), perDay.total(r.Rcpts, now), msgs, day)
		}
		// As Reserve decides.
		wm := perMinute.room(r.Msgs, now, lim.PerMinute, 1)
		wd := perDay.room(r.Rcpts, now, lim.PerDay, rcpts)
		// A slot counts until its end has left the window; a slot dated
		// ahead of now (another worker's clock) counts that much longer.
		ahead := func(slots []paceSlot) time.Duration {
			d := time.Duration(0)
			for _, sl := range slots {
				d = max(d, time.Unix(sl.T, 0).Sub(now))
			}
			return d
		}
		bound := func(w time.Duration, slots []paceSlot) time.Duration {
			return w + min(ahead(slots), math.MaxInt64-w) // Sub saturates; so does this
		}
		if wm < 0 || wm > bound(minuteWindow+minuteSlot, r.Msgs) || wd < 0 || wd > bound(dayWindow+daySlot, r.Rcpts) {
			t.Fatalf("waits %v, %v outside the windows", wm, wd)
		}
		if max(wm, wd) > 0 {
			return
		}
		r.Msgs = perMinute.add(r.Msgs, now, 1)
		r.Rcpts = perDay.add(r.Rcpts, now, rcpts)
		if got := perMinute.total(r.Msgs, now); got != msgs+1 {
			t.Fatalf("minute total %d after adding 1 to %d", got, msgs)
		}
		if got := perDay.total(r.Rcpts, now); got != day+rcpts {
			t.Fatalf("day total %d after adding %d to %d", got, rcpts, day)
		}
		if lim.PerMinute > 0 && msgs+1 > lim.PerMinute {
			t.Fatalf("granted a message over %d a minute: %d counted before", lim.PerMinute, msgs)
		}
		if lim.PerDay > 0 && day+rcpts > lim.PerDay {
			t.Fatalf("granted %d recipients over %d a day: %d counted before", rcpts, lim.PerDay, day)
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("record does not encode again: %v", err)
		}
	})
}

// trueTotal is window.total without overflow: what the slots count, up to
// math.MaxInt (a record holding more allows nothing anyway).
func trueTotal(w window, slots []paceSlot, now time.Time) int {
	n := 0
	for _, s := range slots {
		if w.exit(s).After(now) && s.N > 0 {
			n += min(s.N, math.MaxInt-n)
		}
	}
	return n
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
