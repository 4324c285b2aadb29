package memlimit

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"relay365/internal/testutil"
)

func TestParseAndValidate(t *testing.T) {
	tests := []struct {
		in      string
		want    Limit
		bad     string // error of Parse, or else of Validate; "" for none
		printed string
	}{
		{in: "64MiB", want: 64 << 20, printed: "64MiB"},
		{in: "1GiB", want: 1 << 30, printed: "1GiB"},
		{in: "2TiB", want: 2 << 40, printed: "2TiB"},
		{in: "49152KiB", want: 48 << 20, printed: "48MiB"},
		{in: "100000000", want: 100000000, printed: "100000000B"},
		{in: "100000000B", want: 100000000, printed: "100000000B"},
		{in: "off", want: Off, printed: "off"},
		{in: "32MiB", want: Min, printed: "32MiB"},
		{in: "31MiB", want: 31 << 20, bad: "--memory-limit 31MiB: want at least 32MiB"},
		{in: "0", want: 0, bad: "--memory-limit 0B: want at least 32MiB"},
		{in: "", bad: `--memory-limit "": want a size`},
		{in: "64MB", bad: `--memory-limit "64MB": want a size such as 64MiB`},
		{in: "1.5GiB", bad: `"1.5GiB"`},
		{in: "-64MiB", bad: `"-64MiB"`},
		{in: "MiB", bad: `"MiB"`},
		{in: "9999999TiB", bad: `"9999999TiB"`}, // overflows int64
		{in: "OFF", bad: `"OFF"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var l Limit
			err := l.Set(tc.in)
			if err == nil {
				if l != tc.want {
					t.Fatalf("Parse(%q) = %d, want %d", tc.in, l, tc.want)
				}
				err = l.Validate()
			}
			switch {
			case tc.bad == "" && err != nil:
				t.Fatalf("%q: %v", tc.in, err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Fatalf("%q: error %v, want one with %q", tc.in, err, tc.bad)
			}
			if tc.printed != "" && l.String() != tc.printed {
				t.Fatalf("%q prints as %q, want %q", tc.in, l.String(), tc.printed)
			}
		})
	}
}

// TestApply: the limit is the process's afterwards (read back with
// debug.SetMemoryLimit(-1)), and "off" lifts it.
func TestApply(t *testing.T) {
	t.Setenv(EnvVar, "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	for _, l := range []Limit{Default, 200 << 20, Off} {
		eff, from := Apply(l)
		if got := debug.SetMemoryLimit(-1); got != int64(l) || eff != l || from != "--memory-limit" {
			t.Fatalf("Apply(%s): runtime limit %d, reported %s from %s", l, got, eff, from)
		}
	}
	if Default < Min || Default == Off {
		t.Fatalf("Default %s is not a valid limit", Default)
	}
}

// TestGOMEMLIMITWins: with GOMEMLIMIT set the runtime's limit (which it
// took from the variable at start) is left alone.
func TestGOMEMLIMITWins(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	t.Setenv(EnvVar, "300MiB")
	debug.SetMemoryLimit(300 << 20) // what the runtime did at start
	eff, from := Apply(Default)
	if got := debug.SetMemoryLimit(-1); got != 300<<20 || eff != 300<<20 || from != EnvVar {
		t.Fatalf("runtime limit %d, reported %s from %s; want GOMEMLIMIT's 300MiB", got, eff, from)
	}
	if math.MaxInt64 != int64(Off) {
		t.Fatal("Off is not the runtime's no-limit value")
	}
}

func TestAbove(t *testing.T) {
	for _, tc := range []struct {
		floor          Limit
		live, overhead uint64
		want           Limit
	}{
		{Default, 20 << 20, 8 << 20, Default},       // well under the floor: the floor
		{Default, 40 << 20, 16 << 20, 76 << 20},     // idle lanes: half above the heap, plus their stacks
		{Default, 160 << 20, 40 << 20, 280 << 20},   // many lanes: the limit follows
		{256 << 20, 140 << 20, 40 << 20, 256 << 20}, // an operator's larger floor stays
		{Off, 1 << 30, 0, Off},
	} {
		if got := Above(tc.floor, tc.live, tc.overhead); got != tc.want {
			t.Errorf("Above(%s, %d MiB, %d MiB) = %s, want %s", tc.floor, tc.live>>20, tc.overhead>>20, got, tc.want)
		}
	}
}

// TestFollowRaisesTheLimitOverALiveHeap: with a live heap above the floor
// the soft limit rises to half above it (so the collector does not
// run after every allocation), and goes back to the floor once the heap
// is freed.
func TestFollowRaisesTheLimitOverALiveHeap(t *testing.T) {
	floor := Limit(32 << 20)
	followFrom(t, floor)

	live := make([]byte, 96<<20)
	for i := range live {
		live[i] = byte(i)
	}
	waitLimit(t, "over 96 MiB live", func(l int64) bool { return l >= 120<<20 })
	runtime.KeepAlive(live)
	live = nil
	waitLimit(t, "back at the floor", func(l int64) bool { return l == int64(floor) })
}

// followFrom sets the soft limit to floor and runs Follow every 10 ms
// until the test ends, then puts the limit back.
func followFrom(t *testing.T, floor Limit) {
	before := debug.SetMemoryLimit(int64(floor))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Follow(ctx, floor, 10*time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done; debug.SetMemoryLimit(before) })
}

// waitLimit collects (the live heap is counted at the end of a
// collection) until the soft limit satisfies ok, for 5 s at most.
func waitLimit(t *testing.T, what string, ok func(int64) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testutil.Eventually(t, ctx, what, func() bool {
		runtime.GC()
		return ok(debug.SetMemoryLimit(-1))
	})
}

// TestFollowCountsGoroutineStacks: the soft limit counts goroutine stacks
// as well as the heap, so Follow keeps them above it too. 2,000 parked
// goroutines with 32 KiB stacks (about 64 MiB, as many idle lanes) and a
// small heap raise a 32 MiB floor past the stacks.
func TestFollowCountsGoroutineStacks(t *testing.T) {
	floor := Limit(32 << 20)
	followFrom(t, floor)

	release := make(chan struct{})
	var parked sync.WaitGroup
	for range 2000 {
		parked.Add(1)
		go deepStack(&parked, release)
	}
	parked.Wait()
	defer close(release)
	waitLimit(t, "2,000 goroutines of 32 KiB", func(l int64) bool { return l >= 56<<20 })
}

// deepStack parks with a 32 KiB frame on its stack.
//
//go:noinline
func deepStack(parked *sync.WaitGroup, release chan struct{}) {
	var frame [32 << 10]byte
	frame[len(frame)-1] = 1
	parked.Done()
	<-release
	runtime.KeepAlive(frame)
}
