// Package bench is `relay bench`: it measures the relay against the fastest
// the SMTP sink can go, in one process, and prints the figures. Figures
// come from here, never from timed assertions in tests.
//
// # Method
//
// For each JetStream sync setting (Config.Sync: "always", the default of
// `relay serve`, and a lazy interval) and each connection count, one
// environment is started (a fresh store per line, so no line depends on
// the ones before it): the whole
// `relay serve` (internal/daemon: embedded JetStream on a temporary
// directory, the token service, the delivery engine) and the fake Office 365
// (internal/fakeo365) as the SMTP sink with STARTTLS and XOAUTH2, its pacing
// and per-mailbox limits switched off. For each connection count C an
// account bench-c<C> is connected through the real consent path with
// MaxConns = C and pacing limits far above the run, so the engine opens C
// sessions to one mailbox. Then, per C:
//
//  1. ceiling: plain go-smtp clients send the same rendered messages
//     straight to the sink over C connections (STARTTLS and AUTH XOAUTH2
//     once per connection, then MAIL/RCPT/DATA/RSET);
//  2. relay: Messages messages are published on mail.send.bench-c<C> and
//     relayed with C sessions, timed from the first publish to the sink's
//     last 250;
//  3. latency: messages published at Rate per second, each timed from just
//     before its publish to the sink's acceptance (publish→250).
//
// CPU (user+system from getrusage) is counted over the relay run and
// covers the whole process: the engine, the embedded NATS server and the
// fake sink. Peak RSS is the process's maximum resident set so far. The
// token figure is the p99 of the workers' cached token client (Token) after
// the runs.
//
// With --ingress (RunIngress, ingress.go) the bench measures the SMTP
// front door end to end instead: messages submitted over C submission
// connections (STARTTLS, AUTH PLAIN) until the sink's 250 for the
// delivered copy; ingress.go describes its runs.
//
// Failure semantics: any error (a message refused, a run not finishing
// within its deadline) ends the bench with that error; the environment is
// always torn down and the temporary directory removed.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"relay365/internal/memlimit"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Config is what `relay bench` takes.
type Config struct {
	Messages int      // messages per ceiling and relay run; default 20000
	Conns    []int    // connection counts; default 1,4,16
	Size     int      // rendered message size in bytes; default 2048; above message.InlineMax through the body store (large.go)
	Rate     int      // offered rate of the latency run, messages/s; default 200
	Latency  int      // messages in each latency run; default Rate*5, at most Messages
	Sync     []string // JetStream sync settings; default always and 2m
	JSON     bool     // one JSON object per line instead of a table
	Dir      string   // where the temporary directory goes; default os.TempDir()
	// Timeout bounds one run (ceiling, relay or latency); default 10m.
	Timeout time.Duration
	// MemoryLimit is the process's soft memory limit (--memory-limit;
	// default memlimit.Default), applied by the command before Run: the
	// peak RSS figure depends on it.
	MemoryLimit memlimit.Limit
	// HeapProfile, if set, is a file the heap profile (pprof) is written
	// to at the end of every relay run, while that line's environment (the
	// server, its stores, the engine) is still up; each line overwrites the
	// last, so the file holds the last line's. After the bench, with every
	// environment torn down, the live heap would be near empty.
	HeapProfile string
	// Ingress switches the environment's SMTP front door on (RunIngress
	// sets it: `relay bench --ingress`, ingress.go).
	Ingress bool
}

// Limits of the flags.
const (
	maxConns   = 64
	minSize    = 512
	maxSize    = message.MaxSize
	maxRate    = 100000
	maxMessage = 10_000_000
)

// Defaults fills zero values.
func (c *Config) Defaults() {
	if c.Messages == 0 {
		c.Messages = 20000
	}
	if len(c.Conns) == 0 {
		c.Conns = []int{1, 4, 16}
	}
	if c.Size == 0 {
		c.Size = 2048
	}
	if c.Rate == 0 {
		c.Rate = 200
	}
	if c.Latency == 0 {
		c.Latency = min(c.Rate*5, c.Messages)
	}
	if len(c.Sync) == 0 {
		c.Sync = []string{"always", "2m"}
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.MemoryLimit == 0 {
		c.MemoryLimit = memlimit.Default
	}
}

// Validate says what to fix in a bad configuration. Zero values other than
// Latency's are errors: call it before Defaults on flag values.
func (c *Config) Validate() error {
	var errs []error
	if c.Messages < 1 || c.Messages > maxMessage {
		errs = append(errs, fmt.Errorf("--messages %d: want 1 to %d", c.Messages, maxMessage))
	}
	for _, n := range c.Conns {
		if n < 1 || n > maxConns {
			errs = append(errs, fmt.Errorf("--conns: %d connections: want 1 to %d", n, maxConns))
		}
	}
	if c.Size < minSize || c.Size > maxSize {
		errs = append(errs, fmt.Errorf("--size %d: want %d to %d bytes", c.Size, minSize, maxSize))
	}
	if c.Rate < 1 || c.Rate > maxRate {
		errs = append(errs, fmt.Errorf("--rate %d: want 1 to %d messages/s", c.Rate, maxRate))
	}
	if c.Latency < 0 {
		errs = append(errs, fmt.Errorf("--latency-messages %d: want at least 1 (0: 5 s at --rate)", c.Latency))
	}
	for _, s := range c.Sync {
		if _, _, err := queue.ParseSync(s); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.MemoryLimit.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ParseConns reads a --conns list such as "1,4,16".
func ParseConns(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("--conns %q: %q is not a number", s, f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("--conns %q: %d given twice", s, n)
		}
		out = append(out, n)
	}
	return out, nil
}

// Result is one output line: one sync setting and one connection count.
type Result struct {
	Sync            string  `json:"sync"`
	Conns           int     `json:"conns"`
	Messages        int     `json:"messages"`
	Size            int     `json:"size"`
	CeilingMsgsPerS float64 `json:"ceiling_msgs_per_s"`
	RelayMsgsPerS   float64 `json:"relay_msgs_per_s"`
	Ratio           float64 `json:"ratio"`
	Rate            int     `json:"rate"`
	LatencyMessages int     `json:"latency_messages"`
	P50Ms           float64 `json:"p50_ms"`
	P95Ms           float64 `json:"p95_ms"`
	P99Ms           float64 `json:"p99_ms"`
	CPUSPer1kMsgs   float64 `json:"cpu_s_per_1k_msgs"`
	PeakRSSMB       float64 `json:"peak_rss_mb"`
	TokenGetP99Ms   float64 `json:"token_get_p99_ms"`
}

// Run runs the bench and writes the results to out as they come (a table
// with a header, or JSON lines). cfg must have passed Validate.
func Run(ctx context.Context, cfg Config, out io.Writer) ([]Result, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := newPrinter(out, cfg.JSON)
	var all []Result
	for _, sync := range cfg.Sync {
		res, err := runSync(ctx, cfg, sync, p)
		all = append(all, res...)
		if err != nil {
			return all, fmt.Errorf("sync %s: %w", sync, err)
		}
	}
	return all, nil
}

// runSync runs every connection count, each against an environment of its
// own: a line's figures must not depend on which lines ran before it. (In
// one shared store the later runs started with the earlier runs' idempotency
// markers, ~230 bytes of subject index each in the embedded server's heap;
// 40,000 of them made the collector work against the soft memory limit and
// halved the last run's throughput. BENCHMARKS.md has the figures.)
func runSync(ctx context.Context, cfg Config, syncSetting string, p *printer) ([]Result, error) {
	var results []Result
	for _, c := range cfg.Conns {
		r, err := runOne(ctx, cfg, syncSetting, c)
		if err != nil {
			return results, fmt.Errorf("%d connections: %w", c, err)
		}
		results = append(results, r)
		if err := p.print(r); err != nil {
			return results, err
		}
	}
	return results, nil
}

// runOne starts an environment, runs one line in it and tears it down.
func runOne(ctx context.Context, cfg Config, syncSetting string, c int) (Result, error) {
	e, err := startEnv(ctx, cfg, syncSetting)
	if err != nil {
		return Result{}, err
	}
	defer e.close()
	return e.runConns(ctx, c)
}

// runConns is one line: ceiling, relay and latency at c connections.
func (e *env) runConns(ctx context.Context, c int) (Result, error) {
	r := Result{Sync: e.sync, Conns: c, Messages: e.cfg.Messages, Size: e.cfg.Size, Rate: e.cfg.Rate, LatencyMessages: e.cfg.Latency}
	acct, err := e.enroll(ctx, c)
	if err != nil {
		return r, err
	}
	elapsed, err := e.ceiling(ctx, acct, c)
	if err != nil {
		return r, fmt.Errorf("ceiling: %w", err)
	}
	r.CeilingMsgsPerS = float64(e.cfg.Messages) / elapsed.Seconds()

	cpu0 := cpuTime()
	elapsed, err = e.relayRun(ctx, acct)
	if err != nil {
		return r, fmt.Errorf("relay: %w", err)
	}
	r.CPUSPer1kMsgs = (cpuTime() - cpu0).Seconds() / float64(e.cfg.Messages) * 1000
	r.RelayMsgsPerS = float64(e.cfg.Messages) / elapsed.Seconds()
	r.Ratio = r.RelayMsgsPerS / r.CeilingMsgsPerS
	if e.cfg.HeapProfile != "" {
		if err := writeHeapProfile(e.cfg.HeapProfile); err != nil {
			return r, err
		}
	}

	if !e.cfg.large() { // large messages: throughput and memory only
		lat, err := e.latencyRun(ctx, acct)
		if err != nil {
			return r, fmt.Errorf("latency: %w", err)
		}
		r.P50Ms, r.P95Ms, r.P99Ms = ms(percentile(lat, 50)), ms(percentile(lat, 95)), ms(percentile(lat, 99))
	} else {
		r.LatencyMessages = 0
	}
	if r.TokenGetP99Ms, err = e.tokenGetP99(ctx, acct.Alias); err != nil {
		return r, fmt.Errorf("token.get: %w", err)
	}
	r.PeakRSSMB = peakRSSMB()
	return r, nil
}

// percentile of sorted-in-place durations (nearest rank).
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := (len(d)*p + 99) / 100
	return d[min(max(i-1, 0), len(d)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is the process's user plus system CPU time (getrusage).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSSMB is the process's maximum resident set size (Linux reports
// ru_maxrss in KiB).
func peakRSSMB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024
}

// printer writes results as a table or JSON lines, one line per result as
// it comes (a long run shows progress).
type printer struct {
	json bool
	out  io.Writer
	head sync.Once
}

func newPrinter(out io.Writer, asJSON bool) *printer { return &printer{json: asJSON, out: out} }

const tableRow = "%-7s %5v %8v %10v %9v %6v %8v %8v %8v %9v %8v %12v\n"

func (p *printer) print(r Result) error {
	if p.json {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.out, "%s\n", b)
		return err
	}
	p.head.Do(func() {
		fmt.Fprintf(p.out, tableRow, "sync", "conns", "messages", "ceiling/s", "relay/s", "ratio",
			"p50 ms", "p95 ms", "p99 ms", "cpu s/1k", "RSS MB", "token p99 ms")
	})
	f := func(format string, v float64) string { return fmt.Sprintf(format, v) }
	_, err := fmt.Fprintf(p.out, tableRow, r.Sync, r.Conns, r.Messages, f("%.0f", r.CeilingMsgsPerS), f("%.0f", r.RelayMsgsPerS),
		f("%.2f", r.Ratio), f("%.1f", r.P50Ms), f("%.1f", r.P95Ms), f("%.1f", r.P99Ms), f("%.3f", r.CPUSPer1kMsgs),
		f("%.0f", r.PeakRSSMB), f("%.4f", r.TokenGetP99Ms))
	return err
}

// latencies collects publish→250 times of one latency run, keyed by the
// message's number in its subject.
type latencies struct {
	prefix string
	pub    []atomic.Int64 // unix nanos just before the publish
	mu     sync.Mutex
	got    []time.Duration
}

// writeHeapProfile writes the heap profile (live and allocated since the
// start) after a collection, so in-use figures are the live data.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("heap profile: %w", err)
	}
	return f.Close()
}
