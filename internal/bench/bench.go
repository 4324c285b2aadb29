// Package bench is `relay bench`: it measures relay serve against the
// fastest the SMTP sink can go and prints the figures, each part in its
// own process so that CPU is shared as in a deployment. Figures come from
// here, never from timed assertions in tests.
//
// # Processes
//
// The bench re-executes its own binary (proc.go) for:
//
//   - the sink: `relay bench-child sink` (child.go), the fake Office 365
//     (internal/fakeo365) with STARTTLS and XOAUTH2 as in production and
//     its pacing, per-mailbox connection limit and message retention off.
//     Its first stdout line (JSON) says where it listens; a control API on
//     loopback answers the bench's counts and the acceptance times of the
//     timed messages;
//   - relay serve itself, with its real flags (--data-dir, --key-file,
//     --nats-listen on a free loopback port, --nats-sync of the line, JSON
//     logs, --memory-limit, and for --ingress --smtp-listen): the embedded
//     JetStream, the token service and the engine, as deployed. The
//     bench's RELAY_ variables are not passed on. Its log says where it
//     listens;
//   - the ceiling client: `relay bench-child ceiling`, plain go-smtp
//     clients, its job (with the access token) on stdin, its time on
//     stdout.
//
// The publisher is the bench process itself: it needs each message's
// publish time for the latency figures, and a producer is a separate
// process in a deployment too. It connects to relay serve's NATS with the
// producer seed relay serve writes in its data directory, and as the
// operator (the admin seed, as authtool and relay producer do on the
// relay's host) to enroll accounts, add the --ingress producer and read
// JetStream's accounting; the embedded server stays closed to strangers.
// Children are started under the bench's context (killed when it ends),
// asked to die with the bench (Pdeathsig on Linux), and stopped (SIGTERM,
// then SIGKILL after 10 s) and waited for on every way out of a line.
//
// # Method
//
// For each JetStream sync setting (Config.Sync: "always", the default of
// relay serve, and lazy intervals) and each connection count C, a fresh
// sink and relay serve (a fresh store, so no line depends on the ones
// before it). Account bench-c<C> is connected through the real consent
// path (authorization code with PKCE against the sink, a test mail, sealed
// tokens) with MaxConns C and pacing limits far above the run, and one
// message is relayed through it (the lane is up). Then:
//
//  1. ceiling: the ceiling child sends Messages rendered messages (the
//     relay's renderer, size and sender) straight to the sink over C
//     connections (STARTTLS and AUTH XOAUTH2 once per connection, then
//     MAIL/RCPT/DATA/RSET);
//  2. relay: Messages messages are published on mail.send.bench-c<C>
//     in atomic batches of Batch (queue.PublishBatch, two batches in
//     flight), or with Batch 1 each on its own (asynchronously, at most
//     256 unacknowledged), and relayed with C sessions, timed from the
//     first publish to the sink's acceptance of the last;
//  3. latency: messages published one at a time at Rate per second (open
//     loop), each timed from just before its publish to its acceptance at
//     the sink (both wall-clock times on one machine).
//
// Per line: relay serve's user+system CPU over the relay run, read from
// /proc/<pid>/stat before the first publish and after the relay acked the
// last message (MAIL empty); the ceiling child's CPU over its whole life
// (the kernel's rusage once it exited, its start-up included); relay
// serve's peak RSS (VmHWM in /proc/<pid>/status) at the line's end; and
// JetStream store writes per message over the relay run, counted by the
// bench from JetStream's own accounting (writes.go says exactly what):
// one per message stored in any stream, one per message removed from MAIL
// by an ack. With sync always, each of those is a write the file store
// fsyncs before it answers.
//
// With --ingress (RunIngress, ingress.go) the bench measures the SMTP
// front door end to end instead, with the same children (no ceiling):
// messages submitted over C submission connections (STARTTLS, AUTH PLAIN)
// until the sink's 250 for the delivered copy. With --size above the
// inline limit (large.go) bodies go through the body store; there is no
// latency run.
//
// With --accounts N (RunAccounts, accounts.go) the bench measures many
// mailboxes instead (issue 18), with one sync setting (default always):
// the sink has Office 365's limits on (30 messages a minute and 3
// connections per mailbox); N accounts bench-m<i> are enrolled through
// consent without the test mail, with Office 365's default limits, while
// relay serve runs; relay serve is then restarted on the same data
// directory and the bind time runs from its new start to
// relay_lanes_bound = N on its /metrics. After --accounts-settle it
// measures relay serve's CPU (% of one core) over --accounts-idle and its
// RSS, then loads every mailbox at exactly 30 a minute (N/2 msg/s,
// message j to mailbox j mod N, evenly spaced) for --accounts-duration:
// accepted msg/s, publish→250 p50/p99, the sink's 432 and 554 5.2.0
// replies (pacing violations), relay serve's CPU and peak RSS.
//
// Failure semantics: any error (a message refused, a child that stops or
// does not answer, a run not finishing within its deadline) ends the bench
// with that error and the child's last log lines; the children are always
// stopped and the temporary directory removed.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"relay365/internal/memlimit"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Config is what `relay bench` takes.
type Config struct {
	Messages int   // messages per ceiling and relay run; default 20000
	Conns    []int // connection counts; default 1,4,16
	Size     int   // rendered message size in bytes; default 2048; above message.InlineMax through the body store (large.go)
	Rate     int   // offered rate of the latency run, messages/s; default 200
	Latency  int   // messages in each latency run; default Rate*5, at most Messages
	// Batch is how the relay run hands its messages over: in atomic
	// batches of Batch (producer.PublishBatch, as a producer with many
	// messages at hand would), or with 1 each on its own, asynchronously
	// (at most 256 unacknowledged). Default queue.BatchSize.
	Batch int
	Sync  []string // JetStream sync settings; default always and 2m
	JSON  bool     // one JSON object per line instead of a table
	Dir   string   // where the temporary directory goes; default os.TempDir()
	// Timeout bounds one run (ceiling, relay or latency); default 10m.
	Timeout time.Duration
	// MemoryLimit is relay serve's soft memory limit (its --memory-limit;
	// default memlimit.Default): the peak RSS figure depends on it.
	MemoryLimit memlimit.Limit
	// Exe is the binary the children run (the sink and ceiling client as
	// `Exe bench-child …`, the relay as `Exe serve …`); default the
	// bench's own (os.Executable). Tests give a test binary whose
	// TestMain runs the relay command line when ChildEnv is set.
	Exe string
	// OnChild, if set, is called with each child's process ID as it
	// starts (the test that no child outlives the bench uses it).
	OnChild func(pid int)
	// Ingress switches the environment's SMTP front door on (RunIngress
	// sets it: `relay bench --ingress`, ingress.go).
	Ingress bool
	// Accounts, above 0, is the many-mailboxes mode (RunAccounts,
	// accounts.go): that many mailboxes at Office 365's 30 a minute each,
	// one sync setting. AccountsSettle (default DefaultAccountsSettle)
	// and AccountsIdle (default 30s) are the wait after every lane is
	// bound and the idle period measured after it; AccountsDuration
	// (default 5m) the load.
	Accounts         int
	AccountsSettle   time.Duration
	AccountsIdle     time.Duration
	AccountsDuration time.Duration
}

// DefaultAccountsSettle is the wait before the idle period of
// --accounts: an idle lane's pulls lengthen 5, 10, 20, 40 s until they
// reach the engine's relay.DefaultIdleFetchWait (60 s), and the idle
// period should see only those. Change it with that constant.
const DefaultAccountsSettle = 80 * time.Second

// Limits of the flags.
const (
	maxConns   = 64
	minSize    = 512
	maxSize    = message.MaxSize
	maxRate    = 100000
	maxMessage = 10_000_000
	// maxAccounts bounds --accounts: 20,000 mailboxes offer 10,000 msg/s.
	maxAccounts = 20000
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
	if c.Batch == 0 {
		c.Batch = queue.BatchSize
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
	if c.AccountsSettle == 0 {
		c.AccountsSettle = DefaultAccountsSettle
	}
	if c.AccountsIdle == 0 {
		c.AccountsIdle = 30 * time.Second
	}
	if c.AccountsDuration == 0 {
		c.AccountsDuration = 5 * time.Minute
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
	if c.Batch < 1 || c.Batch > queue.BatchSize {
		errs = append(errs, fmt.Errorf("--publish-batch %d: want 1 (each message on its own) to %d", c.Batch, queue.BatchSize))
	}
	if c.Rate < 1 || c.Rate > maxRate {
		errs = append(errs, fmt.Errorf("--rate %d: want 1 to %d messages/s", c.Rate, maxRate))
	}
	if c.Latency < 0 {
		errs = append(errs, fmt.Errorf("--latency-messages %d: want at least 1 (0: 5 s at --rate)", c.Latency))
	}
	for _, s := range c.Sync {
		if _, _, err := queue.ParseSync(s); err != nil {
			// ParseSync names relay serve's --nats-sync; the bench's flag
			// is --sync.
			errs = append(errs, fmt.Errorf("--sync %q: want \"always\" or a positive duration such as 1s", s))
		}
	}
	if err := c.MemoryLimit.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Accounts < 0 || c.Accounts > maxAccounts {
		errs = append(errs, fmt.Errorf("--accounts %d: want 1 to %d mailboxes (0: the conns/sync matrix)", c.Accounts, maxAccounts))
	}
	if c.Accounts > 0 {
		for _, d := range []struct {
			flag string
			v    time.Duration
		}{{"--accounts-settle", c.AccountsSettle}, {"--accounts-idle", c.AccountsIdle}, {"--accounts-duration", c.AccountsDuration}} {
			if d.v <= 0 {
				errs = append(errs, fmt.Errorf("%s %v: want a duration above 0 such as 30s", d.flag, d.v))
			}
		}
		if len(c.Sync) > 1 {
			errs = append(errs, fmt.Errorf("--sync %s: --accounts runs one sync setting, give one", strings.Join(c.Sync, ",")))
		}
		if c.Ingress {
			errs = append(errs, errors.New("--accounts and --ingress: give one of them"))
		}
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
	Batch           int     `json:"publish_batch"`
	CeilingMsgsPerS float64 `json:"ceiling_msgs_per_s"`
	RelayMsgsPerS   float64 `json:"relay_msgs_per_s"`
	Ratio           float64 `json:"ratio"`
	Rate            int     `json:"rate"`
	LatencyMessages int     `json:"latency_messages"`
	P50Ms           float64 `json:"p50_ms"`
	P95Ms           float64 `json:"p95_ms"`
	P99Ms           float64 `json:"p99_ms"`
	// RelayCPUSPer1kMsgs: relay serve's user+system CPU over the relay
	// run (and its acks), per 1,000 messages.
	RelayCPUSPer1kMsgs float64 `json:"relay_cpu_s_per_1k_msgs"`
	// CeilingCPUSPer1kMsgs: the ceiling client process's CPU, its whole
	// life, per 1,000 messages.
	CeilingCPUSPer1kMsgs float64 `json:"ceiling_cpu_s_per_1k_msgs"`
	// PeakRSSMB: relay serve's peak resident set (VmHWM) at the line's end.
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// WritesPerMsg: JetStream store writes per message over the relay
	// run (writes.go); with sync always, each is fsynced.
	WritesPerMsg float64 `json:"store_writes_per_msg"`
}

// Run runs the bench and writes the results to out as they come (a table
// with a header, or JSON lines). cfg must have passed Validate.
func Run(ctx context.Context, cfg Config, out io.Writer) ([]Result, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := newPrinter(out, cfg.JSON)
	return runLines(ctx, cfg, (*env).runConns, p.print)
}

// runLines runs line at every sync setting and connection count of cfg,
// each against an environment of its own, and prints each result as it
// comes: a line's figures must not depend on which lines ran before it.
// (In one shared store the later runs started with the earlier runs'
// idempotency markers, ~230 bytes of subject index each in the embedded
// server's heap; 40,000 of them made the collector work against the soft
// memory limit and halved the last run's throughput. BENCHMARKS.md has
// the figures.)
func runLines[R any](ctx context.Context, cfg Config, line func(*env, context.Context, int) (R, error), print func(R) error) ([]R, error) {
	var results []R
	for _, syncSetting := range cfg.Sync {
		for _, c := range cfg.Conns {
			r, err := runOne(ctx, cfg, syncSetting, c, line)
			if err != nil {
				return results, fmt.Errorf("sync %s: %d connections: %w", syncSetting, c, err)
			}
			results = append(results, r)
			if err := print(r); err != nil {
				return results, err
			}
		}
	}
	return results, nil
}

// runOne starts an environment, runs one line in it and tears it down.
func runOne[R any](ctx context.Context, cfg Config, syncSetting string, c int, line func(*env, context.Context, int) (R, error)) (R, error) {
	e, err := startEnv(ctx, cfg, syncSetting)
	if err != nil {
		var zero R
		return zero, err
	}
	defer e.close()
	return line(e, ctx, c)
}

// runConns is one line: ceiling, relay and latency at c connections.
func (e *env) runConns(ctx context.Context, c int) (Result, error) {
	r := Result{Sync: e.sync, Conns: c, Messages: e.cfg.Messages, Size: e.cfg.Size, Batch: e.cfg.Batch, Rate: e.cfg.Rate, LatencyMessages: e.cfg.Latency}
	acct, err := e.enroll(ctx, c)
	if err != nil {
		return r, err
	}
	elapsed, cpu, err := e.ceiling(ctx, acct, c)
	if err != nil {
		return r, fmt.Errorf("ceiling: %w", err)
	}
	r.CeilingMsgsPerS = float64(e.cfg.Messages) / elapsed.Seconds()
	r.CeilingCPUSPer1kMsgs = per1k(cpu, e.cfg.Messages)

	fig, err := e.measure(ctx, func() (err error) {
		elapsed, err = e.relayRun(ctx, acct)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("relay: %w", err)
	}
	r.RelayMsgsPerS = float64(e.cfg.Messages) / elapsed.Seconds()
	r.Ratio = r.RelayMsgsPerS / r.CeilingMsgsPerS
	r.RelayCPUSPer1kMsgs = per1k(fig.cpu, e.cfg.Messages)
	r.WritesPerMsg = float64(fig.writes) / float64(e.cfg.Messages)

	if !e.cfg.large() { // large messages: throughput and memory only
		lat, err := e.latencyRun(ctx, acct)
		if err != nil {
			return r, fmt.Errorf("latency: %w", err)
		}
		r.P50Ms, r.P95Ms, r.P99Ms = ms(percentile(lat, 50)), ms(percentile(lat, 95)), ms(percentile(lat, 99))
	} else {
		r.LatencyMessages = 0
	}
	if r.PeakRSSMB, err = procPeakRSSMB(e.relay.pid()); err != nil {
		return r, fmt.Errorf("relay serve's peak RSS: %w", err)
	}
	return r, nil
}

// per1k is CPU seconds per 1,000 of n messages.
func per1k(cpu time.Duration, n int) float64 { return cpu.Seconds() / float64(n) * 1000 }

// percentile of sorted-in-place durations (nearest rank).
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := (len(d)*p + 99) / 100
	return d[min(max(i-1, 0), len(d)-1)]
}

// rate prints messages a second: whole numbers, but a tenth below 10 (30 MB
// messages go at a few a second, and "1" would hide a 0.6).
func rate(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// printer writes results as a table or JSON lines, one line per result as
// it comes (a long run shows progress).
type printer struct {
	json bool
	out  io.Writer
	head sync.Once
}

func newPrinter(out io.Writer, asJSON bool) *printer { return &printer{json: asJSON, out: out} }

const tableRow = "%-7s %5v %8v %10v %9v %6v %8v %8v %8v %13v %15v %7v %10v\n"

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
			"p50 ms", "p95 ms", "p99 ms", "relay cpu s/1k", "ceiling cpu s/1k", "RSS MB", "writes/msg")
	})
	f := func(format string, v float64) string { return fmt.Sprintf(format, v) }
	_, err := fmt.Fprintf(p.out, tableRow, r.Sync, r.Conns, r.Messages, rate(r.CeilingMsgsPerS), rate(r.RelayMsgsPerS),
		f("%.2f", r.Ratio), f("%.1f", r.P50Ms), f("%.1f", r.P95Ms), f("%.1f", r.P99Ms), f("%.3f", r.RelayCPUSPer1kMsgs),
		f("%.3f", r.CeilingCPUSPer1kMsgs), f("%.0f", r.PeakRSSMB), f("%.2f", r.WritesPerMsg))
	return err
}
