//go:build scale

package relay_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/relay"
)

// Issue 18, "many mailboxes": one engine with N accounts, each paced at
// Office 365's 30 messages a minute. Behind the build tag `scale` (it
// takes minutes):
//
//	go test -tags scale -run '^$' -bench BenchmarkManyMailboxes -benchtime 1x ./internal/relay
//	go test -tags scale -run '^$' -bench BenchmarkManyMailboxes -benchtime 1x ./internal/relay -scale.duration 5m
//
// Everything runs in this process — the embedded nats-server, the token
// service, the fake Office 365 and the engine — so CPU, RSS and goroutines
// are the whole process's (an upper bound for the engine's own); `relay
// bench --accounts N` measures relay serve alone in its own process.
var (
	scaleAccounts = flag.Int("scale.accounts", 2000, "mailboxes (accounts), each sent 30 messages a minute")
	scaleSettle   = flag.Duration("scale.settle", 80*time.Second, "wait after every lane is bound before the idle period (idle lanes' pulls lengthen to IdleFetchWait)")
	scaleIdle     = flag.Duration("scale.idle", 30*time.Second, "idle time measured after every lane is bound")
	scaleIdleProf = flag.String("scale.idleprofile", "", "write a CPU profile of the idle period to this file")
	scaleDuration = flag.Duration("scale.duration", time.Minute, "sustained load: every mailbox at 30 messages a minute")
)

func BenchmarkManyMailboxes(b *testing.B) {
	n := *scaleAccounts
	perMinute := account.DefaultPerMinute
	var (
		latMu sync.Mutex
		lat   []time.Duration
	)
	onAccept := func(m fakeo365.Message) {
		// The subject is "scale <alias> <publish unix nanos>".
		f := strings.Fields(m.Subject)
		if len(f) != 3 || f[0] != "scale" {
			return
		}
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return
		}
		latMu.Lock()
		lat = append(lat, m.Time.Sub(time.Unix(0, ns)))
		latMu.Unlock()
	}
	h := newHarness(b, setup{
		sync:        "5s",
		timeout:     *scaleDuration + *scaleIdle + 3*time.Minute,
		manualStart: true,
		// relay serve's defaults where the harness shortens them.
		engine: relay.Config{AckWait: queue.DefaultAckWait, FetchWait: 5 * time.Second, SweepEvery: time.Second, UnknownGrace: 3 * time.Second},
		// Office 365's limits: 30 a minute and 3 connections per mailbox.
		fake: fakeo365.Config{PerMinute: perMinute, CountOnly: true, OnAccept: onAccept},
	})

	// Connect the mailboxes: sign-in and token exchange over HTTP against
	// the fake, sealed tokens and account records written as authtool
	// does, without the test mail (2,000 of them would only slow this).
	aliases := make([]string, n)
	enrol := consent.Enroller{Accounts: h.accounts, Store: h.store, SkipTestMail: true}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				alias := fmt.Sprintf("box%04d", i)
				aliases[i] = alias
				a := h.fake.Account(alias, alias+"@contoso.com", "contoso")
				if err := enrol.SignIn(h.ctx, a, consent.FollowURL(h.ctx)); err != nil {
					errs <- fmt.Errorf("enrol %s: %w", alias, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	b.ResetTimer()
	start := time.Now()
	h.start()
	for _, alias := range aliases {
		if err := h.engine.WaitBound(h.ctx, alias); err != nil {
			b.Fatal(err)
		}
	}
	bound := time.Since(start)
	report(b, "lanes bound", bound.Seconds(), "s-bound")

	// Idle: every lane bound, nothing queued, the pulls at their longest.
	time.Sleep(*scaleSettle) // a settling period, not waiting for a condition
	runtime.GC()
	cpu0, t0 := cpuTime(), time.Now()
	if *scaleIdleProf != "" {
		f, err := os.Create(*scaleIdleProf)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(*scaleIdle) // measuring an idle period, not waiting for a condition
	if *scaleIdleProf != "" {
		pprof.StopCPUProfile()
	}
	idleCPU := (cpuTime() - cpu0).Seconds() / time.Since(t0).Seconds() * 100
	report(b, "idle CPU", idleCPU, "%core-idle")
	report(b, "RSS idle", rssMB(), "MB-rss-idle")
	report(b, "goroutines idle (process)", float64(runtime.NumGoroutine()), "goroutines")
	report(b, "goroutines idle (engine)", float64(engineGoroutines()), "goroutines-engine")

	// Sustained load: message j goes to mailbox j mod n at start+j·interval,
	// so each mailbox gets one every 60s/perMinute and all of them
	// together n·perMinute a minute, evenly spread.
	interval := time.Minute / time.Duration(perMinute) / time.Duration(n)
	total := int(*scaleDuration / interval)
	jobs := make(chan int, 4096)
	var pubWG sync.WaitGroup
	var late atomic.Int64 // publishes that started more than 10 ms behind schedule
	loadStart := time.Now()
	for range 32 {
		pubWG.Go(func() {
			for j := range jobs {
				alias := aliases[j%n]
				if time.Since(loadStart.Add(time.Duration(j)*interval)) > 10*time.Millisecond {
					late.Add(1)
				}
				now := time.Now().UnixNano()
				h.publish(alias, fmt.Sprintf("scale-%d", j), fmt.Sprintf("scale %s %d", alias, now))
			}
		})
	}
	cpu1, t1 := cpuTime(), time.Now()
	base := h.fake.Accepted()
	for j := range total {
		if d := time.Until(loadStart.Add(time.Duration(j) * interval)); d > 0 {
			time.Sleep(d) // the load's schedule
		}
		jobs <- j
	}
	close(jobs)
	pubWG.Wait()
	published := time.Since(loadStart)
	if _, err := h.fake.WaitMessages(h.ctx, base+total); err != nil {
		b.Fatalf("%d of %d delivered: %v", h.fake.Accepted()-base, total, err)
	}
	elapsed := time.Since(loadStart)
	loadCPU := (cpuTime() - cpu1).Seconds() / time.Since(t1).Seconds() * 100
	b.StopTimer()

	latMu.Lock()
	ls := slices.Clone(lat)
	latMu.Unlock()
	slices.Sort(ls)
	pct := func(p float64) float64 {
		if len(ls) == 0 {
			return 0
		}
		return float64(ls[min(len(ls)-1, int(p*float64(len(ls))))]) / 1e6
	}
	violations, other := 0, 0
	for reply, c := range h.fake.Replies() {
		if strings.HasPrefix(reply, "432") || strings.HasPrefix(reply, "554 5.2.0") {
			violations += c
		} else {
			other += c
		}
	}
	report(b, "published msg/s", float64(total)/published.Seconds(), "msg/s-published")
	report(b, "sustained msg/s", float64(total)/elapsed.Seconds(), "msg/s")
	report(b, "publishes late >10ms", float64(late.Load()), "late")
	report(b, "p50 publish→250", pct(0.50), "ms-p50")
	report(b, "p99 publish→250", pct(0.99), "ms-p99")
	report(b, "max publish→250", pct(1), "ms-max")
	report(b, "load CPU", loadCPU, "%core-load")
	report(b, "RSS after load", rssMB(), "MB-rss-load")
	report(b, "goroutines after load (process)", float64(runtime.NumGoroutine()), "goroutines-load")
	report(b, "pacing violations (432, 554 5.2.0)", float64(violations), "violations")
	report(b, "other refusals", float64(other), "refusals")
}

func report(b *testing.B, what string, v float64, unit string) {
	b.Logf("%-36s %10.2f %s", what, v, unit)
	b.ReportMetric(v, unit)
}

// cpuTime is the process's user plus system time (getrusage).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssMB is VmRSS from /proc/self/status, in MB (0 where there is none).
func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// engineGoroutines counts the goroutines whose stack passes through the
// engine, its SMTP sessions or the NATS client (not the embedded server,
// the fake or the token service).
func engineGoroutines() int {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	n := 0
	for g := range strings.SplitSeq(buf.String(), "\n\n") {
		if strings.Contains(g, "relay365/internal/relay.") || strings.Contains(g, "relay365/internal/submit.") {
			n++
		}
	}
	return n
}
