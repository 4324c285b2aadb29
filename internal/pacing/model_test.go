package pacing_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"relay365/internal/pacing"
)

// pacerSeeds is how many random runs TestPacerModelNeverGrantsTooMany
// makes (-pacer.seeds; 300 of 4,000 steps each found nothing).
var pacerSeeds = flag.Int("pacer.seeds", 4, "random runs of the pacer model test")

// TestPacerModelNeverGrantsTooMany drives several pacers (processes)
// sharing one key with random reservations, restamps, confirmations,
// releases, lost connections and restarts, and checks at every grant
// that the messages Office 365 may still count (each at the latest
// moment it could have counted it) plus one fit the limit. Pacers that
// count a slot to its last acceptance wrongly (a slot holding another's
// message, L not cleared by a new reservation) are caught within a few
// dozen seeds.
func TestPacerModelNeverGrantsTooMany(t *testing.T) {
	for seed := range *pacerSeeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runPacerModel(t, uint64(seed)) })
	}
}

type modelTicket struct {
	p       int
	tk      pacing.Ticket
	at      time.Time // reservation (or restamp) time
	sending bool
}

func runPacerModel(t *testing.T, seed uint64) {
	pt := newPacerTest(t)
	ctx, clock := pt.ctx, pt.clock
	rng := rand.New(rand.NewPCG(seed, 99))
	const mbx = "alerts@contoso.com"
	limit := 2 + rng.IntN(3)
	lim := pacing.Limits{PerMinute: limit, PerDay: 1 << 20}
	np := 2 + rng.IntN(2)
	pacers := make([]*pacing.Pacer, np)
	for i := range pacers {
		pacers[i] = pt.open()
	}
	var live []*modelTicket
	var counted []time.Time // latest possible o of messages sent (confirmed or lost)
	var log []string
	logf := func(f string, a ...any) {
		log = append(log, fmt.Sprintf("%s ", clock.Now().Format("04:05.000"))+fmt.Sprintf(f, a...))
	}
	fail := func(f string, a ...any) {
		t.Helper()
		for _, l := range log[max(0, len(log)-80):] {
			t.Log(l)
		}
		t.Fatalf(f, a...)
	}
	remove := func(i int) { live = append(live[:i], live[i+1:]...) }
	// Sends stay short: anything sending for over 20 s is lost (o at
	// its reservation: the pacer cannot know more; the lane moves a
	// reservation whose connection was lost to that moment itself).
	reap := func() {
		for k := len(live) - 1; k >= 0; k-- {
			if live[k].sending && clock.Now().Sub(live[k].at) > 20*time.Second {
				logf("p%d lost (slow)", live[k].p)
				counted = append(counted, live[k].at)
				remove(k)
			}
		}
	}
	for step := 0; step < 4000; step++ {
		switch r := rng.IntN(100); {
		case r < 30: // reserve
			i := rng.IntN(np)
			tk, wait, err := pacers[i].Reserve(ctx, mbx, 1, lim)
			if err != nil {
				t.Fatal(err)
			}
			if wait > 0 && wait < time.Minute && rng.IntN(10) < 7 {
				clock.Advance(wait) // a lane sleeps exactly the wait and asks again
				reap()
				tk, wait, err = pacers[i].Reserve(ctx, mbx, 1, lim)
				if err != nil {
					t.Fatal(err)
				}
			}
			if wait == 0 {
				now := clock.Now()
				n := 0
				for _, o := range counted {
					if o.After(now.Add(-time.Minute)) {
						n++
					}
				}
				for _, x := range live {
					if x.sending {
						n++
					}
				}
				logf("p%d reserve granted (real count %d)", i, n)
				if n+1 > limit {
					fail("seed %d step %d: p%d granted at %s with %d possibly counted by Office 365 (limit %d)", seed, step, i, now.Format("04:05.000"), n, limit)
				}
				live = append(live, &modelTicket{p: i, tk: tk, at: now})
			}
		case r < 45: // start sending a reserved ticket
			var idle []int
			for k, x := range live {
				if !x.sending {
					idle = append(idle, k)
				}
			}
			if len(idle) == 0 {
				continue
			}
			k := idle[rng.IntN(len(idle))]
			x := live[k]
			age := clock.Now().Sub(x.at)
			switch {
			case age >= time.Minute:
				logf("p%d release stale", x.p)
				if err := pacers[x.p].Release(ctx, x.tk); err != nil {
					t.Fatal(err)
				}
				remove(k)
				continue
			case age > 30*time.Second:
				tk, err := pacers[x.p].Restamp(ctx, x.tk)
				if err != nil {
					t.Fatal(err)
				}
				logf("p%d restamp", x.p)
				x.tk, x.at = tk, clock.Now()
			}
			logf("p%d send", x.p)
			x.sending = true
		case r < 75: // finish a send
			var busy []int
			for k, x := range live {
				if x.sending {
					busy = append(busy, k)
				}
			}
			if len(busy) == 0 {
				continue
			}
			k := busy[rng.IntN(len(busy))]
			x := live[k]
			switch q := rng.IntN(10); {
			case q < 7:
				counted = append(counted, clock.Now())
				logf("p%d confirm", x.p)
				if err := pacers[x.p].Confirm(ctx, x.tk); err != nil {
					t.Fatal(err)
				}
			case q < 9:
				logf("p%d release refused", x.p)
				if err := pacers[x.p].Release(ctx, x.tk); err != nil {
					t.Fatal(err)
				}
			default:
				logf("p%d lost", x.p)
				counted = append(counted, x.at) // as in reap
			}
			remove(k)
		case r < 77: // restart a process
			i := rng.IntN(np)
			pacers[i] = pt.open()
			logf("p%d restart", i)
			for k := len(live) - 1; k >= 0; k-- {
				if live[k].p == i {
					if live[k].sending {
						counted = append(counted, live[k].at)
					}
					remove(k)
				}
			}
		default: // time passes
			var d time.Duration
			switch q := rng.IntN(10); {
			case q < 6:
				d = time.Duration(1+rng.IntN(400)) * time.Millisecond
			case q < 9:
				d = time.Duration(1+rng.IntN(3000)) * time.Millisecond
			default:
				d = time.Duration(1+rng.IntN(40)) * time.Second
			}
			clock.Advance(d)
			reap()
		}
	}
}
