package bench

// `relay bench --accounts N`: many mailboxes (issue 18), relay serve in its
// own process. Everything the mode needs is in this file, besides the
// sink's Office 365 limits (child.go) and the restart of relay serve on
// its data directory (startRelay keeps the key). It measures what
// BenchmarkManyMailboxes (internal/relay/scale_test.go) measures in one
// process, for relay serve alone:
//
//  1. enrolment: N accounts bench-m<i> (mailboxes bench-m<i>@contoso.com)
//     through consent against the sink, as authtool does but without the
//     test mail (consent.Enroller.SkipTestMail), enrolWorkers at a time,
//     with Office 365's default limits (30 messages a minute, 10,000
//     recipients a day, 3 connections). relay serve runs meanwhile and
//     starts a lane, and its durable consumer, for each;
//  2. bind: relay serve is stopped (SIGTERM; the time until it exited is
//     a figure too, its shutdown with N lanes just started, allowed
//     restartGrace) and started again on the same data directory, as
//     after an upgrade. "Bound" is relay_lanes_bound =
//     N on its /metrics, polled every bindPoll; the figure is the time
//     from just before the new process was started to the first poll that
//     saw N (an upper bound by at most one poll);
//  3. idle: after AccountsSettle (idle pulls lengthen to the engine's
//     idle fetch wait), relay serve's CPU over AccountsIdle as a share of
//     one core (/proc/<pid>/stat), and its resident set at the end
//     (VmRSS);
//  4. load: for AccountsDuration, message j to mailbox j mod N at start +
//     j·60s/(30·N): every mailbox at exactly its 30 a minute, N/2 msg/s in
//     all, evenly spread, published by publishWorkers goroutines (each
//     publish waits for its PubAck, as a producer's does). Each message is
//     timed from just before its publish to its acceptance at the sink.
//     The run ends when the sink accepted every message and MAIL is empty;
//     accepted msg/s is the messages over the time from the first publish
//     to the last acceptance, load CPU relay serve's over the same period
//     (acks included), peak RSS its VmHWM at the end (since the restart).
//
// The sink runs with Office 365's limits: a mailbox's 31st message in a
// rolling minute is refused (554 5.2.0), as is a fourth concurrent
// session's (432 4.3.2). Those replies, from the sink's control API, are
// the pacing violations: the relay's pacer and connection limit must keep
// them at 0. Any other refusal is counted apart.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
)

const (
	// enrolWorkers bounds the concurrent enrolments: each is a sign-in,
	// a token exchange and two KV writes; 8 keep 2,000 to well under a
	// minute without making the enrolment the machine's whole load.
	enrolWorkers = 8
	// publishWorkers publish the load; each waits for its PubAck (an
	// fsync with sync always), so 1,000 msg/s needs several at once.
	publishWorkers = 32
	// bindPoll is how often relay_lanes_bound is read after the restart.
	bindPoll = 100 * time.Millisecond
	// restartGrace is how long relay serve gets to exit after SIGTERM
	// before the restart: its engine alone may take ShutdownGrace
	// (relay.DefaultShutdownGrace, 30 s) for sends in flight.
	restartGrace = 2 * time.Minute
	// latePublish: a publish that starts later than this behind its
	// schedule is counted late (the offered rate was not kept).
	latePublish = 10 * time.Millisecond
	// accountsPrefix is the load's subject prefix, a timed one at the
	// sink (timedPrefixes).
	accountsPrefix = "load "
)

// AccountsResult is the line of `relay bench --accounts N`.
type AccountsResult struct {
	Mode     string `json:"mode"` // "accounts"
	Sync     string `json:"sync"`
	Accounts int    `json:"accounts"`
	// StopS: SIGTERM to the exit of the relay serve that enrolled them
	// (its shutdown with N lanes); BindS: the next one's start to every
	// lane bound (relay_lanes_bound).
	StopS float64 `json:"stop_s"`
	BindS float64 `json:"bind_s"`
	// IdleCPUPct: relay serve's CPU over the idle period, % of one core;
	// IdleRSSMB its resident set at the end of it.
	IdleCPUPct float64 `json:"idle_cpu_pct"`
	IdleRSSMB  float64 `json:"idle_rss_mb"`
	// LoadS and Messages: the load's length and messages published.
	LoadS    float64 `json:"load_s"`
	Messages int     `json:"messages"`
	// OfferedMsgsPerS: the schedule's rate, N×30 a minute;
	// PublishedMsgsPerS: what the publishers kept (Messages over the
	// time to the last PubAck); LatePublishes: publishes that started
	// more than latePublish behind the schedule; NotPublished: messages
	// of the schedule no publisher had started when the load's time was
	// up (the relay could not take the offered rate; the load ends with
	// its duration rather than running on behind it).
	OfferedMsgsPerS   float64 `json:"offered_msgs_per_s"`
	PublishedMsgsPerS float64 `json:"published_msgs_per_s"`
	LatePublishes     int     `json:"late_publishes"`
	NotPublished      int     `json:"not_published"`
	// AcceptedMsgsPerS: Messages over the first publish to the sink's
	// last acceptance.
	AcceptedMsgsPerS float64 `json:"accepted_msgs_per_s"`
	// P50Ms, P99Ms: publish → the sink's 250.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// PacingViolations: the sink's 432 and 554 5.2.0 replies over the
	// whole run; OtherRefusals its other non-2xx replies.
	PacingViolations int `json:"pacing_violations"`
	OtherRefusals    int `json:"other_refusals"`
	// LoadCPUPct: relay serve's CPU over the load, % of one core;
	// PeakRSSMB its VmHWM at the end (since the restart).
	LoadCPUPct float64 `json:"load_cpu_pct"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
}

// AccountsDefaults fills what the accounts mode defaults differently from
// the relay mode: the durable sync only.
func (c *Config) AccountsDefaults() {
	if len(c.Sync) == 0 {
		c.Sync = []string{"always"}
	}
}

// RunAccounts runs the many-mailboxes mode and writes its line to out.
// cfg must have passed Validate, with Accounts above 0.
func RunAccounts(ctx context.Context, cfg Config, out io.Writer) (AccountsResult, error) {
	if cfg.Accounts <= 0 {
		return AccountsResult{}, errors.New("RunAccounts: no --accounts given")
	}
	cfg.AccountsDefaults()
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return AccountsResult{}, err
	}
	e, err := startEnv(ctx, cfg, cfg.Sync[0])
	if err != nil {
		return AccountsResult{}, err
	}
	defer e.close()
	r, err := e.runAccounts(ctx)
	if err != nil {
		return r, fmt.Errorf("%d accounts: %w", cfg.Accounts, err)
	}
	return r, printAccounts(out, cfg.JSON, r)
}

// runAccounts is the mode's one line.
func (e *env) runAccounts(ctx context.Context) (AccountsResult, error) {
	n := e.cfg.Accounts
	r := AccountsResult{Mode: "accounts", Sync: e.sync, Accounts: n}
	accts, err := e.enrolMany(ctx, n)
	if err != nil {
		return r, err
	}
	stop, bind, err := e.restartRelay(ctx, n)
	r.StopS = stop.Seconds()
	if err != nil {
		return r, err
	}
	r.BindS = bind.Seconds()

	// Idle: every lane bound, nothing queued.
	if err := pause(ctx, e.cfg.AccountsSettle); err != nil {
		return r, err
	}
	cpu, err := e.relayCPUOver(func() error { return pause(ctx, e.cfg.AccountsIdle) })
	if err != nil {
		return r, fmt.Errorf("idle: %w", err)
	}
	r.IdleCPUPct = cpu
	if r.IdleRSSMB, err = procRSSMB(e.relay.pid()); err != nil {
		return r, fmt.Errorf("relay serve's RSS: %w", err)
	}

	var load accountsLoad
	cpu, err = e.relayCPUOver(func() (err error) {
		load, err = e.accountsLoad(ctx, accts)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("load: %w", err)
	}
	r.LoadCPUPct = cpu
	r.LoadS = e.cfg.AccountsDuration.Seconds()
	r.Messages = len(load.lat)
	r.OfferedMsgsPerS = float64(n) * account.DefaultPerMinute / 60
	r.PublishedMsgsPerS = float64(r.Messages) / load.published.Seconds()
	r.LatePublishes = load.late
	r.NotPublished = load.notPublished
	r.AcceptedMsgsPerS = float64(r.Messages) / load.accepted.Seconds()
	r.P50Ms, r.P99Ms = ms(percentile(load.lat, 50)), ms(percentile(load.lat, 99))
	if r.PacingViolations, r.OtherRefusals, err = e.sinkRefusals(ctx); err != nil {
		return r, err
	}
	if r.PeakRSSMB, err = procPeakRSSMB(e.relay.pid()); err != nil {
		return r, fmt.Errorf("relay serve's peak RSS: %w", err)
	}
	return r, nil
}

// enrolMany connects n accounts through consent without the test mail,
// enrolWorkers at a time, with Office 365's default limits.
func (e *env) enrolMany(ctx context.Context, n int) ([]account.Account, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	enrol := consent.Enroller{Accounts: e.accounts, Store: e.store, SkipTestMail: true}
	accts := make([]account.Account, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, enrolWorkers)
	for range min(enrolWorkers, n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				alias := fmt.Sprintf("bench-m%d", i)
				a := account.Account{
					Alias: alias, Mailbox: alias + "@contoso.com", Tenant: tenant, Authority: e.sink.Authority,
					ClientID: fakeo365.ClientID, SMTPAddr: e.sink.SMTP, CAFile: e.sink.CAFile,
					PerMinute: account.DefaultPerMinute, PerDay: account.DefaultPerDay, MaxConns: account.DefaultMaxConns,
				}
				if err := enrol.SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
					errs <- fmt.Errorf("enroll %s: %w", alias, err)
					cancel() // the other workers stop too
					return
				}
				a.Normalize()
				accts[i] = a
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return accts, nil
}

// restartRelay stops relay serve (SIGTERM, as a service manager does,
// waiting up to restartGrace for it to exit), starts it again on the same
// data directory and key, and returns how long the stop took and the time
// from just before the start to the first read of relay_lanes_bound that
// says n.
func (e *env) restartRelay(ctx context.Context, n int) (stopped, bound time.Duration, err error) {
	e.nc.Close()
	e.admin.Close()
	e.nc, e.admin = nil, nil
	stopping := time.Now()
	e.relay.stopWithin(restartGrace)
	stopped = time.Since(stopping)
	if ps := e.relay.cmd.ProcessState; ps == nil || !ps.Exited() {
		return stopped, 0, e.relay.failed(fmt.Errorf("did not exit within %v of SIGTERM", restartGrace))
	}
	e.relayIs = relayAddrs{serving: make(chan struct{})}
	// Binding N lanes may take the machine for a while: the deadline is
	// the bench's run timeout, and the bench connects to NATS only after
	// the lanes are bound, so it neither waits behind them nor slows them.
	sctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	start := time.Now()
	if err := e.startRelayProcess(ctx, sctx); err != nil {
		return stopped, 0, fmt.Errorf("restart: %w", err)
	}
	e.relayIs.mu.Lock()
	addr := e.relayIs.http
	e.relayIs.mu.Unlock()
	if addr == "" {
		return stopped, 0, errors.New("relay serve's log named no HTTP address")
	}
	tick := time.NewTicker(bindPoll)
	defer tick.Stop()
	last := -1
	for {
		got, err := e.lanesBound(sctx, addr)
		if err != nil {
			return stopped, 0, err
		}
		if got >= n {
			bound := time.Since(start)
			if err := e.connectRelay(sctx); err != nil {
				return stopped, bound, fmt.Errorf("after the restart: %w", err)
			}
			return stopped, bound, nil
		}
		last = got
		select {
		case <-tick.C:
		case <-e.relay.done:
			return stopped, 0, e.relay.failed(errors.New("stopped while its lanes bound"))
		case <-sctx.Done():
			return stopped, 0, fmt.Errorf("%d of %d lanes bound: %w", last, n, sctx.Err())
		}
	}
}

// lanesBound reads relay_lanes_bound from relay serve's /metrics (that
// series alone: the handler filters by name).
func (e *env) lanesBound(ctx context.Context, addr string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics?name[]=relay_lanes_bound", nil)
	if err != nil {
		return 0, err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("relay serve's /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("relay serve's /metrics: %s", resp.Status)
	}
	return parseGauge(resp.Body, "relay_lanes_bound")
}

// parseGauge finds an unlabelled series in the Prometheus text format.
func parseGauge(r io.Reader, name string) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", name, err)
			}
			return int(f), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("relay serve's /metrics has no %s", name)
}

// pause waits d (a measured or settling period, or an open-loop
// schedule's next slot; not a condition), or until ctx ends. A d of 0 or
// less returns at once.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// relayCPUOver runs f and returns relay serve's CPU over it as a share of
// one core, in %.
func (e *env) relayCPUOver(f func() error) (float64, error) {
	cpu0, err := procCPU(e.relay.pid())
	if err != nil {
		return 0, fmt.Errorf("relay serve's CPU: %w", err)
	}
	t0 := time.Now()
	if err := f(); err != nil {
		return 0, err
	}
	cpu1, err := procCPU(e.relay.pid())
	if err != nil {
		return 0, fmt.Errorf("relay serve's CPU: %w", err)
	}
	return (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds() * 100, nil
}

// accountsLoad is the load's measurements.
type accountsLoad struct {
	published    time.Duration   // first publish → last PubAck
	accepted     time.Duration   // first publish → the sink's last acceptance
	late         int             // publishes that started latePublish behind schedule
	notPublished int             // scheduled messages not started when the load's time was up
	lat          []time.Duration // per message: publish → the sink's 250
}

// accountsLoad publishes message j to accts[j mod N] at start +
// j·interval, every mailbox at its 30 a minute, for AccountsDuration, and
// waits for the sink to accept every one and for MAIL to be empty. When
// the publishers fall behind (each waits for its PubAck), the messages
// not yet handed to one when the load's time is up (a second of grace)
// are left out and counted: the load lasts its duration whatever the
// relay takes, and the drain after it is bounded by what was published.
func (e *env) accountsLoad(ctx context.Context, accts []account.Account) (accountsLoad, error) {
	n := len(accts)
	interval := time.Minute / time.Duration(account.DefaultPerMinute*n)
	total := max(int(e.cfg.AccountsDuration/interval), 1)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.AccountsDuration+e.cfg.Timeout)
	defer cancel()
	base, err := e.sinkCount(ctx)
	if err != nil {
		return accountsLoad{}, err
	}
	pub := make([]int64, total) // each index written by one worker
	jobs := make(chan int, publishWorkers)
	errs := make(chan error, publishWorkers)
	var late atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range publishWorkers {
		wg.Go(func() {
			for j := range jobs {
				a := accts[j%n]
				if time.Since(start.Add(time.Duration(j)*interval)) > latePublish {
					late.Add(1)
				}
				id := "accounts-" + strconv.Itoa(j)
				data, err := newMessage(a.Mailbox, e.cfg.Size, id, accountsPrefix+strconv.Itoa(j)).Encode()
				if err == nil {
					pub[j] = time.Now().UnixNano()
					_, err = queue.Publish(ctx, e.js, a.Alias, id, data)
				}
				if err != nil {
					errs <- fmt.Errorf("message %d: %w", j, err)
					cancel()
					return
				}
			}
		})
	}
	over := time.NewTimer(time.Until(start.Add(e.cfg.AccountsDuration + time.Second)))
	defer over.Stop()
	scheduled := 0
schedule:
	for j := range total {
		if err := pause(ctx, time.Until(start.Add(time.Duration(j)*interval))); err != nil {
			break
		}
		select {
		case jobs <- j:
			scheduled++
		case <-over.C:
			break schedule
		case <-ctx.Done():
			break schedule
		}
	}
	close(jobs)
	wg.Wait()
	published := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return accountsLoad{}, err
	}
	if err := ctx.Err(); err != nil {
		return accountsLoad{}, fmt.Errorf("publishing: %w", err)
	}
	notPublished := total - scheduled
	total, pub = scheduled, pub[:scheduled]
	last, err := e.sinkWait(ctx, base+total)
	if err != nil {
		refused := "the sink's refusals unreadable"
		if v, o, rerr := e.sinkRefusals(context.WithoutCancel(ctx)); rerr == nil {
			refused = fmt.Sprintf("the sink refused %d for pacing, %d otherwise", v, o)
		}
		return accountsLoad{}, fmt.Errorf("%w (%s); relay serve's last log lines:\n%s", err, refused, e.relay.logs.tail())
	}
	if err := e.waitMailEmpty(ctx); err != nil {
		return accountsLoad{}, err
	}
	lat, err := e.timed(ctx, accountsPrefix, pub)
	if err != nil {
		return accountsLoad{}, err
	}
	return accountsLoad{published: published, accepted: last.Sub(start), late: int(late.Load()), notPublished: notPublished, lat: lat}, nil
}

// sinkRefusals reads the sink's non-2xx replies: pacing violations and
// the others.
func (e *env) sinkRefusals(ctx context.Context) (pacing, other int, err error) {
	var replies map[string]int
	if err := e.sinkGet(ctx, "/replies", &replies); err != nil {
		return 0, 0, err
	}
	pacing, other = classifyRefusals(replies)
	return pacing, other, nil
}

// classifyRefusals splits the sink's replies (keyed "432 4.3.2") into
// pacing violations — 432 (a mailbox's concurrent sessions above its
// limit) and 554 5.2.0 (its messages above its rate) — and the rest.
func classifyRefusals(replies map[string]int) (pacing, other int) {
	for reply, c := range replies {
		if strings.HasPrefix(reply, "432") || strings.HasPrefix(reply, "554 5.2.0") {
			pacing += c
		} else {
			other += c
		}
	}
	return pacing, other
}

const accountsRow = "%8v %7v %7v %10v %11v %10v %11v %10v %7v %7v %10v %8v %10v %11v\n"

// printAccounts writes the line as a table (with its header) or JSON.
func printAccounts(out io.Writer, asJSON bool, r AccountsResult) error {
	if asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	f := func(format string, v float64) string { return fmt.Sprintf(format, v) }
	fmt.Fprintf(out, accountsRow, "accounts", "stop s", "bind s", "idle cpu %", "idle RSS MB", "offered/s", "published/s", "accepted/s",
		"p50 ms", "p99 ms", "violations", "refused", "load cpu %", "peak RSS MB")
	_, err := fmt.Fprintf(out, accountsRow, r.Accounts, f("%.1f", r.StopS), f("%.2f", r.BindS), f("%.1f", r.IdleCPUPct), f("%.0f", r.IdleRSSMB),
		rate(r.OfferedMsgsPerS), rate(r.PublishedMsgsPerS), rate(r.AcceptedMsgsPerS), f("%.1f", r.P50Ms), f("%.1f", r.P99Ms),
		r.PacingViolations, r.OtherRefusals, f("%.1f", r.LoadCPUPct), f("%.0f", r.PeakRSSMB))
	return err
}
