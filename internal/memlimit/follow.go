package memlimit

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// FollowEvery is how often Follow looks at the live heap.
const FollowEvery = time.Second

// The runtime's figures Follow reads (runtime/metrics). The soft limit
// counts all the memory the runtime holds, not only the heap: overhead is
// what it holds besides heap spans (goroutine stacks, which the memory
// classes count apart from heap objects, and GC metadata), the total less
// the heap's free, object, released and unused classes.
var followSamples = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/unused:bytes",
}

// Above is the soft limit Follow keeps under a floor, for a live heap of
// live bytes and overhead bytes of runtime memory besides the heap: the
// floor, or the live heap plus a half plus the overhead when that is
// more.
//
// # Why
//
// A soft limit below what the process needs does not hold memory down
// (nothing the collector frees is enough), but it makes the collector run
// after every few kilobytes allocated, each time over the whole heap and
// every goroutine's stack: the runtime then caps it at half the process's
// CPU, one whole core of two, for as long as it lasts. `relay bench
// --accounts 1000` measured exactly that: 1,000 idle lanes hold about 51
// MB of live heap and 7,000 goroutines whose stacks, with the heap, fill
// the 64 MiB default, and relay serve collected 170 times in 30 idle
// seconds, 40–50 % of a core (BENCHMARKS.md, "Many mailboxes"). With the
// limit half the live heap above what the process needs, the collector
// runs once half the live heap has been allocated, as with GOGC=50:
// memory stays within half of the live data, and an idle process stays
// idle.
//
// Half, not a quarter (as at first): under load the collector's share
// grows with how often it runs. With 2,000 busy mailboxes (`relay bench
// --accounts 2000 --accounts-duration 2m`, two runs each) a quarter
// carried 330–338 msg/s at p99 2.8–3.3 s, half 402–421 at p99 0.9–1.0 s
// (as many as with no limit at all), for 246–250 MB resident idle against
// 219–221 (BENCHMARKS.md, "The soft memory limit under load").
func Above(floor Limit, live, overhead uint64) Limit {
	if floor == Off {
		return Off
	}
	want := Limit(live + live/2 + overhead)
	if want < floor || want < 0 {
		return floor
	}
	return want
}

// Follow keeps the process's soft limit at Above(floor, …) for the
// runtime's current figures, looking every interval, until ctx ends. Call
// it after Apply, only when Apply took the limit from the flag:
// GOMEMLIMIT is the operator's own and is left alone.
func Follow(ctx context.Context, floor Limit, every time.Duration) {
	if floor == Off {
		return
	}
	samples := make([]metrics.Sample, len(followSamples))
	for i, name := range followSamples {
		samples[i].Name = name
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		metrics.Read(samples)
		var v [6]uint64
		ok := true
		for i, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				ok = false
				break
			}
			v[i] = s.Value.Uint64()
		}
		if ok {
			overhead := uint64(0)
			if heap := v[2] + v[3] + v[4] + v[5]; v[1] > heap {
				overhead = v[1] - heap
			}
			want := int64(Above(floor, v[0], overhead))
			if debug.SetMemoryLimit(-1) != want {
				debug.SetMemoryLimit(want)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
