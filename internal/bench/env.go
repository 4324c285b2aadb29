package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/token"
)

const (
	tenant    = "contoso.onmicrosoft.com"
	recipient = "ops@fabrikam.com"
	// publishWindow bounds the relay run's unacknowledged async publishes.
	publishWindow = 256
)

// env is one line's world: the sink and `relay serve` as children, and
// the bench's own connections to the relay's NATS (as a producer, to
// publish, and as the operator, to enroll and to read JetStream's
// accounting), through the seeds relay serve wrote in its data directory.
type env struct {
	cfg      Config
	sync     string
	dir      string
	children []*child

	sink    sinkReady
	relay   *child
	relayIs relayAddrs
	http    *http.Client

	nc    *nats.Conn // producer
	js    jetstream.JetStream
	admin *nats.Conn // operator
	ajs   jetstream.JetStream

	accounts *account.Registry
	store    *token.Store
}

// relayAddrs is what relay serve's log says about where it listens.
type relayAddrs struct {
	mu      sync.Mutex
	nats    string // "relay serving": its NATS URL
	http    string // "relay serving": its /metrics and /status address
	smtp    string // "SMTP submission listening": the STARTTLS front door
	smtpCA  string // the front door's loopback CA file
	serving chan struct{}
}

// onLine reads relay serve's JSON log lines for the addresses.
func (r *relayAddrs) onLine(line []byte) {
	if !strings.Contains(string(line), "listening") && !strings.Contains(string(line), "serving") && !strings.Contains(string(line), "ca_file") {
		return
	}
	var l struct {
		Message  string `json:"message"`
		NATS     string `json:"nats"`
		HTTP     string `json:"http"`
		Addr     string `json:"addr"`
		Implicit bool   `json:"implicit_tls"`
		CAFile   string `json:"ca_file"`
	}
	if json.Unmarshal(line, &l) != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case l.Message == "SMTP submission listening" && !l.Implicit:
		r.smtp = l.Addr
	case l.CAFile != "":
		r.smtpCA = l.CAFile
	case l.Message == "relay serving" && r.nats == "":
		r.nats, r.http = l.NATS, l.HTTP
		close(r.serving)
	}
}

// startEnv starts the line's sink and relay and connects to the relay.
func startEnv(ctx context.Context, cfg Config, syncSetting string) (_ *env, err error) {
	dir, err := os.MkdirTemp(cfg.Dir, "relay-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, sync: syncSetting, dir: dir, http: &http.Client{}, relayIs: relayAddrs{serving: make(chan struct{})}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.startSink(ctx, sctx); err != nil {
		return nil, err
	}
	if err := e.startRelay(ctx, sctx); err != nil {
		return nil, err
	}
	return e, nil
}

// startSink starts `relay bench-child sink` and reads where it listens.
func (e *env) startSink(ctx, sctx context.Context) error {
	dir := filepath.Join(e.dir, "sink")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	args := []string{ChildCommand, "sink", dir}
	if e.cfg.Accounts > 0 {
		args = append(args, sinkO365) // Office 365's limits: the mode counts violations
	}
	c, err := e.startChild(ctx, "the sink", args, true, nil)
	if err != nil {
		return err
	}
	return c.readLine(sctx, &e.sink)
}

// serveArgs is relay serve's command line for the line: the durable
// default except for the line's sync setting, and what the bench needs to
// find it (loopback ports the kernel picks, JSON logs).
func (e *env) serveArgs(keyFile string) []string {
	args := []string{"serve",
		"--data-dir", filepath.Join(e.dir, "data"), "--key-file", keyFile,
		"--nats-listen", "127.0.0.1:-1", "--nats-sync", e.sync,
		"--http-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--memory-limit", e.cfg.MemoryLimit.String(),
	}
	if e.cfg.Ingress {
		// The SMTP front door on loopback with the relay's own CA; every
		// bench connection comes from 127.0.0.1, so the per-address limit
		// is the bench's largest connection count.
		perIP := max(slices.Max(e.cfg.Conns), ingress.DefaultMaxConnsPerIP)
		args = append(args, "--smtp-listen", "127.0.0.1:0",
			"--smtp-max-conns-per-ip", strconv.Itoa(perIP), "--smtp-max-conns", strconv.Itoa(max(perIP, ingress.DefaultMaxConns)))
	}
	return args
}

// startRelay starts relay serve as deployed, waits for its "relay
// serving" line, and connects as a producer and as the operator.
func (e *env) startRelay(ctx, sctx context.Context) error {
	if err := e.startRelayProcess(ctx, sctx); err != nil {
		return err
	}
	return e.connectRelay(sctx)
}

// startRelayProcess starts relay serve (with a new key, or the one a
// restart keeps) and waits for its "relay serving" line.
func (e *env) startRelayProcess(ctx, sctx context.Context) error {
	keyFile := e.keyFile()
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		if _, err := token.GenerateKeyFile(keyFile); err != nil {
			return err
		}
	}
	var err error
	if e.relay, err = e.startChild(ctx, "relay serve", e.serveArgs(keyFile), false, e.relayIs.onLine); err != nil {
		return err
	}
	select {
	case <-e.relayIs.serving:
		return nil
	case <-e.relay.done:
		return e.relay.failed(errors.New("stopped before serving"))
	case <-sctx.Done():
		return e.relay.failed(fmt.Errorf("not serving: %w", sctx.Err()))
	}
}

func (e *env) keyFile() string { return filepath.Join(e.dir, "token.key") }

// connectRelay connects to the serving relay as a producer and as the
// operator.
func (e *env) connectRelay(sctx context.Context) error {
	keys, err := token.LoadKeyring(e.keyFile())
	if err != nil {
		return err
	}
	e.relayIs.mu.Lock()
	natsURL := e.relayIs.nats
	e.relayIs.mu.Unlock()
	dataDir := filepath.Join(e.dir, "data")
	connect := func(name string, r roles.Role) (*nats.Conn, error) {
		var o queue.ConnectOptions
		roles.Default(&o, dataDir, r)
		return queue.ConnectWith(natsURL, name, o)
	}
	if e.nc, err = connect("relay-bench-producer", roles.Producer); err != nil {
		return err
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(publishWindow)); err != nil {
		return err
	}
	if e.admin, err = connect("relay-bench-admin", roles.Admin); err != nil {
		return err
	}
	if e.ajs, err = jetstream.New(e.admin); err != nil {
		return err
	}
	if e.accounts, err = account.OpenRegistry(sctx, e.ajs); err != nil {
		return err
	}
	if e.store, err = token.OpenStore(sctx, e.ajs, keys); err != nil {
		return err
	}
	return nil
}

// close stops the connections and every child (the relay first, so it
// does not spend its shutdown on a sink that is gone), and removes the
// temporary directory.
func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.admin != nil {
		e.admin.Close()
	}
	for _, c := range slices.Backward(e.children) {
		c.stop()
	}
	_ = os.RemoveAll(e.dir)
}

// enroll connects account bench-c<c> through consent (authorization code
// with PKCE against the sink's identity platform, a test mail, sealed
// tokens) with c connections and pacing limits far above the run, then
// relays one message through it: once that arrived, the relay's lane for
// the account is up.
func (e *env) enroll(ctx context.Context, c int) (account.Account, error) {
	alias := fmt.Sprintf("bench-c%d", c)
	a := account.Account{
		Alias: alias, Mailbox: alias + "@contoso.com", Tenant: tenant, Authority: e.sink.Authority,
		ClientID: fakeo365.ClientID, SMTPAddr: e.sink.SMTP, CAFile: e.sink.CAFile,
	}
	a.PerMinute, a.PerDay, a.MaxConns = 1<<30, 1<<30, c
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	if err := (consent.Enroller{Accounts: e.accounts, Store: e.store}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		return a, fmt.Errorf("enroll %s: %w", alias, err)
	}
	a.Normalize()
	base, err := e.sinkCount(ctx)
	if err != nil {
		return a, err
	}
	payload, err := e.payload(ctx, a)
	if err != nil {
		return a, err
	}
	data, err := payload("warm-up-"+alias, "warm-up")
	if err != nil {
		return a, err
	}
	if _, err := queue.Publish(ctx, e.js, alias, "warm-up-"+alias, data); err != nil {
		return a, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := e.sinkWait(ctx, base+1); err != nil {
		return a, fmt.Errorf("warm-up message: %w", err)
	}
	return a, nil
}

// sinkGet asks the sink's control API.
func (e *env) sinkGet(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.sink.Control+path, nil)
	if err != nil {
		return err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return fmt.Errorf("the sink: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the sink: %s %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// sinkCount is the number of messages the sink accepted so far.
func (e *env) sinkCount(ctx context.Context) (int, error) {
	var c sinkCount
	err := e.sinkGet(ctx, "/count", &c)
	return c.Accepted, err
}

// sinkWait waits until the sink accepted n messages in all and returns
// the time it accepted the last (the nth, when nothing else is sent).
func (e *env) sinkWait(ctx context.Context, n int) (time.Time, error) {
	var c sinkCount
	if err := e.sinkGet(ctx, "/wait?n="+strconv.Itoa(n), &c); err != nil {
		got, _ := e.sinkCount(context.WithoutCancel(ctx))
		return time.Time{}, fmt.Errorf("the sink accepted %d of %d: %w", got, n, err)
	}
	return time.Unix(0, c.LastNs), nil
}

// sinkTimes is the acceptance time of each timed subject with prefix.
func (e *env) sinkTimes(ctx context.Context, prefix string) (map[string]int64, error) {
	var t map[string]int64
	err := e.sinkGet(ctx, "/times?prefix="+url.QueryEscape(prefix), &t)
	return t, err
}

// newMessage is a message of a run, its text sized so the rendered
// message is about size bytes.
func newMessage(mailbox string, size int, id, subject string) *message.Message {
	m := &message.Message{ID: id, Account: strings.SplitN(mailbox, "@", 2)[0], To: []string{recipient}, Subject: subject}
	m.Text = filler(max(size-renderOverhead(mailbox), 1))
	return m
}

var (
	overheadMu sync.Mutex
	overheads  = map[string]int{}
)

// renderOverhead is what rendering adds to a message's text (headers and
// MIME structure) for mailbox.
func renderOverhead(mailbox string) int {
	overheadMu.Lock()
	defer overheadMu.Unlock()
	if n, ok := overheads[mailbox]; ok {
		return n
	}
	n := 400
	m := &message.Message{ID: "relay-bench-c1-12345", To: []string{recipient}, Subject: "relay 12345", Text: "."}
	if r, err := message.Render(m, message.Sender{Mailbox: mailbox}, time.Now()); err == nil {
		n = len(r.Data) - len(m.Text)
	}
	overheads[mailbox] = n
	return n
}

var (
	fillerMu    sync.Mutex
	fillerCache = map[int]string{}
)

// filler is n bytes of 7-bit text in lines of 72 characters.
func filler(n int) string {
	fillerMu.Lock()
	defer fillerMu.Unlock()
	if s, ok := fillerCache[n]; ok {
		return s
	}
	var b strings.Builder
	const line = "The quick brown fox jumps over the lazy dog; pack my box with jugs. 0123"
	for b.Len() < n {
		b.WriteString(line[:min(len(line), n-b.Len())])
		if b.Len() < n {
			b.WriteByte('\n')
		}
	}
	fillerCache[n] = b.String()
	return fillerCache[n]
}

// ceiling runs the ceiling child: Messages rendered messages straight to
// the sink over c plain go-smtp connections, with the access token the
// consent stored. It returns the child's time and its CPU (its whole
// life, from the kernel's accounting once it exited).
func (e *env) ceiling(ctx context.Context, acct account.Account, c int) (time.Duration, time.Duration, error) {
	rec, _, err := e.store.Get(ctx, acct.Alias)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	base, err := e.sinkCount(ctx)
	if err != nil {
		return 0, 0, err
	}
	ch, err := e.startChild(ctx, "the ceiling client", []string{ChildCommand, "ceiling"}, true, nil)
	if err != nil {
		return 0, 0, err
	}
	job := ceilingJob{Addr: e.sink.SMTP, CAFile: e.sink.CAFile, Mailbox: acct.Mailbox, Token: rec.AccessToken,
		Conns: c, Messages: e.cfg.Messages, Size: e.cfg.Size}
	if err := ch.send(ctx, job); err != nil {
		return 0, 0, err
	}
	ch.stdin.Close()
	var done ceilingDone
	if err := ch.readLine(ctx, &done); err != nil {
		return 0, 0, err
	}
	if err := ch.wait(ctx); err != nil {
		return 0, 0, err
	}
	cpu := ch.cmd.ProcessState.UserTime() + ch.cmd.ProcessState.SystemTime()
	if got, err := e.sinkCount(ctx); err != nil || got-base != e.cfg.Messages {
		return 0, 0, fmt.Errorf("the sink accepted %d of %d messages (%v)", got-base, e.cfg.Messages, err)
	}
	return time.Duration(done.ElapsedNs), cpu, nil
}

// relayFigures are what relay serve cost over a run.
type relayFigures struct {
	cpu    time.Duration // user+system CPU of the relay process
	writes int64         // JetStream store writes (writes.go)
}

// measure runs f and returns relay serve's CPU (from /proc/<pid>/stat)
// and JetStream's store writes over it; f returns once the sink has every
// message, and measure then waits for the relay's acks (MAIL empty) so
// both figures hold the whole of the run's work.
func (e *env) measure(ctx context.Context, f func() error) (relayFigures, error) {
	w0, err := e.storeWrites(ctx)
	if err != nil {
		return relayFigures{}, err
	}
	cpu0, err := procCPU(e.relay.pid())
	if err != nil {
		return relayFigures{}, fmt.Errorf("relay serve's CPU: %w", err)
	}
	if err := f(); err != nil {
		return relayFigures{}, err
	}
	if err := e.waitMailEmpty(ctx); err != nil {
		return relayFigures{}, err
	}
	cpu1, err := procCPU(e.relay.pid())
	if err != nil {
		return relayFigures{}, fmt.Errorf("relay serve's CPU: %w", err)
	}
	w1, err := e.storeWrites(ctx)
	if err != nil {
		return relayFigures{}, err
	}
	return relayFigures{cpu: cpu1 - cpu0, writes: w1.since(w0)}, nil
}

// payload returns how the relay run's messages (and the warm-up) are
// made: inline JSON, or for large sizes a stored body and a message naming
// it (largePayload), as a producer hands them over. A 30 MB warm-up
// published inline would cost relay serve three copies of it while it is
// decoded, and its peak RSS would measure that, not the run.
func (e *env) payload(ctx context.Context, acct account.Account) (func(id, subject string) ([]byte, error), error) {
	if e.cfg.large() {
		return e.largePayload(ctx, acct)
	}
	return func(id, subject string) ([]byte, error) {
		return newMessage(acct.Mailbox, e.cfg.Size, id, subject).Encode()
	}, nil
}

// relayRun publishes Messages messages (publish) and waits for the sink
// to accept them all: the time from the first publish to the last 250.
func (e *env) relayRun(ctx context.Context, acct account.Account) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	payload, err := e.payload(ctx, acct)
	if err != nil {
		return 0, err
	}
	base, err := e.sinkCount(ctx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := e.publish(ctx, acct.Alias, payload); err != nil {
		return 0, err
	}
	last, err := e.sinkWait(ctx, base+e.cfg.Messages)
	if err != nil {
		return 0, err
	}
	return last.Sub(start), nil
}

// batchesInFlight is how many atomic batches the relay run's publisher
// keeps in flight: the next batch is staged while the last commits.
const batchesInFlight = 2

// publish hands the relay run's messages over: in atomic batches of
// cfg.Batch, batchesInFlight at a time, or with a batch of 1 each on
// its own, asynchronously (publishWindow unacknowledged at most).
func (e *env) publish(ctx context.Context, alias string, payload func(id, subject string) ([]byte, error)) error {
	n := e.cfg.Messages
	item := func(i int) (queue.BatchItem, error) {
		id := fmt.Sprintf("relay-%s-%d", alias, i)
		data, err := payload(id, fmt.Sprintf("relay %d", i))
		return queue.BatchItem{Account: alias, ID: id, Data: data}, err
	}
	if e.cfg.Batch <= 1 {
		for i := range n {
			it, err := item(i)
			if err != nil {
				return err
			}
			if _, err := e.js.PublishAsync(queue.Subject(alias), it.Data, jetstream.WithMsgID(it.ID), jetstream.WithStallWait(e.cfg.Timeout)); err != nil {
				return fmt.Errorf("publish: %w", err)
			}
		}
		select {
		case <-e.js.PublishAsyncComplete():
			return nil
		case <-ctx.Done():
			return fmt.Errorf("publishing: %w", ctx.Err())
		}
	}
	next := make(chan []queue.BatchItem)
	errs := make(chan error, batchesInFlight)
	for range batchesInFlight {
		go func() {
			for items := range next {
				if _, err := queue.PublishBatch(ctx, e.js, items); err != nil {
					errs <- fmt.Errorf("publish a batch: %w", err)
					return
				}
			}
			errs <- nil
		}()
	}
	err := func() error {
		defer close(next)
		for lo := 0; lo < n; lo += e.cfg.Batch {
			items := make([]queue.BatchItem, 0, min(e.cfg.Batch, n-lo))
			for i := lo; i < lo+cap(items); i++ {
				it, err := item(i)
				if err != nil {
					return err
				}
				items = append(items, it)
			}
			select {
			case next <- items:
			case err := <-errs:
				errs <- err // for the count below
				return err
			case <-ctx.Done():
				return fmt.Errorf("publishing: %w", ctx.Err())
			}
		}
		return nil
	}()
	for range batchesInFlight {
		if werr := <-errs; werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// latencyRun publishes Latency messages at Rate per second, one publish at
// a time as a producer would, and returns each one's publish→250 time.
func (e *env) latencyRun(ctx context.Context, acct account.Account) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	n := e.cfg.Latency
	const prefix = "latency "
	pub := make([]int64, n)
	base, err := e.sinkCount(ctx)
	if err != nil {
		return nil, err
	}
	interval := time.Second / time.Duration(e.cfg.Rate)
	start := time.Now()
	for i := range n {
		// Open loop: message i is due at start + i×interval whatever the
		// relay does (a late publish goes at once).
		if err := pause(ctx, time.Until(start.Add(time.Duration(i)*interval))); err != nil {
			return nil, err
		}
		id := fmt.Sprintf("latency-%s-%d", acct.Alias, i)
		data, err := newMessage(acct.Mailbox, e.cfg.Size, id, prefix+strconv.Itoa(i)).Encode()
		if err != nil {
			return nil, err
		}
		pub[i] = time.Now().UnixNano()
		if _, err := queue.Publish(ctx, e.js, acct.Alias, id, data); err != nil {
			return nil, err
		}
	}
	if _, err := e.sinkWait(ctx, base+n); err != nil {
		return nil, err
	}
	return e.timed(ctx, prefix, pub)
}

// timed pairs the sink's acceptance times of the subjects prefix+i with
// their start times pub[i].
func (e *env) timed(ctx context.Context, prefix string, pub []int64) ([]time.Duration, error) {
	times, err := e.sinkTimes(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]time.Duration, 0, len(pub))
	for i, t0 := range pub {
		t1, ok := times[prefix+strconv.Itoa(i)]
		if !ok {
			return nil, fmt.Errorf("the sink has no time for %q", prefix+strconv.Itoa(i))
		}
		out = append(out, time.Duration(t1-t0))
	}
	return out, nil
}
