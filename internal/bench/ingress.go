package bench

// `relay bench --ingress`: the SMTP front door end to end. Everything the
// mode needs is in this file (plus the listener switched on in
// serveArgs), so it can move with the rest of the bench. The processes are
// the relay mode's: relay serve (here with --smtp-listen) and the sink as
// children; the submission clients run in the bench process, which plays
// the producers (there is no ceiling client).
//
// For each sync setting and connection count C, in a fresh environment:
// an account bench-c<C> connected through consent (max_conns C towards the
// sink, as in the relay mode), a producer "bench" allowed to send through
// it, and C submission connections to the front door, each after
// STARTTLS and AUTH PLAIN (done before any clock starts: a client keeps
// its connection, and the front door remembers a password that matched,
// so argon2id runs once, not per connection). Then:
//
//  1. load: Messages messages, closed loop (each connection sends its next
//     message as soon as the front door answers 250), timed from the first
//     MAIL to the sink's last 250. Each message's latency runs from its
//     MAIL to the sink's acceptance of the delivered copy; under a closed
//     loop it includes the wait behind the backlog the front door accepts
//     faster than delivery drains, so it grows with Messages.
//  2. latency: Latency messages offered at Rate per second (open loop)
//     over the same connections; each is timed from when it is due (a
//     free connection takes it at once unless all C are busy) to the
//     sink's acceptance.
//
// The front door answers 250 only after JetStream's PubAck, so with sync
// "always" every accepted message was fsynced before its 250. CPU, peak
// RSS and store writes are relay serve's, as in the relay mode, over the
// load run.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relay365/internal/account"
	"relay365/internal/ingress"
)

// benchProducer is the producer identity the submission clients use.
const benchProducer = "bench"

// IngressResult is one line of `relay bench --ingress`: one sync setting
// and one number of submission connections.
type IngressResult struct {
	Mode     string `json:"mode"` // "ingress"
	Sync     string `json:"sync"`
	Conns    int    `json:"conns"`
	Messages int    `json:"messages"`
	Size     int    `json:"size"`
	// MsgsPerS: Messages over the time from the first MAIL to the sink's
	// last 250 (end to end).
	MsgsPerS float64 `json:"msgs_per_s"`
	// AcceptMsgsPerS: Messages over the time from the first MAIL to the
	// front door's last 250 (what producers see).
	AcceptMsgsPerS float64 `json:"accept_msgs_per_s"`
	// Load*: MAIL → the sink's 250, in the closed-loop load run.
	LoadP50Ms float64 `json:"load_p50_ms"`
	LoadP99Ms float64 `json:"load_p99_ms"`
	// Rate, LatencyMessages and P*: the open-loop run at Rate.
	Rate            int     `json:"rate"`
	LatencyMessages int     `json:"latency_messages"`
	P50Ms           float64 `json:"p50_ms"`
	P95Ms           float64 `json:"p95_ms"`
	P99Ms           float64 `json:"p99_ms"`
	// AcceptP99Ms: MAIL → the front door's 250 (PubAck included) in the
	// load run.
	AcceptP99Ms float64 `json:"accept_p99_ms"`
	// RelayCPUSPer1kMsgs, PeakRSSMB, WritesPerMsg: relay serve's, as in
	// Result; CPU and writes over the load run.
	RelayCPUSPer1kMsgs float64 `json:"relay_cpu_s_per_1k_msgs"`
	PeakRSSMB          float64 `json:"peak_rss_mb"`
	WritesPerMsg       float64 `json:"store_writes_per_msg"`
}

// IngressDefaults fills what the ingress mode defaults differently from
// the relay mode: 16 submission connections and the durable sync only.
func (c *Config) IngressDefaults() {
	if len(c.Conns) == 0 {
		c.Conns = []int{16}
	}
	if len(c.Sync) == 0 {
		c.Sync = []string{"always"}
	}
}

// RunIngress runs the ingress mode and writes the results to out as they
// come. cfg must have passed Validate.
func RunIngress(ctx context.Context, cfg Config, out io.Writer) ([]IngressResult, error) {
	cfg.Ingress = true
	cfg.IngressDefaults()
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &ingressPrinter{json: cfg.JSON, out: out}
	return runLines(ctx, cfg, (*env).ingressConns, p.print)
}

// ingressConns is one line of the ingress mode.
func (e *env) ingressConns(ctx context.Context, c int) (IngressResult, error) {
	r := IngressResult{Mode: "ingress", Sync: e.sync, Conns: c, Messages: e.cfg.Messages, Size: e.cfg.Size,
		Rate: e.cfg.Rate, LatencyMessages: e.cfg.Latency}
	e.relayIs.mu.Lock()
	addr, caFile := e.relayIs.smtp, e.relayIs.smtpCA
	e.relayIs.mu.Unlock()
	if addr == "" || caFile == "" {
		return r, errors.New("relay serve's log named no SMTP front door, or no CA file for it")
	}
	acct, err := e.enroll(ctx, c)
	if err != nil {
		return r, err
	}
	// As `relay producer add` does: the producer's record in
	// relay_producers, written as the operator.
	producers, err := ingress.OpenProducers(ctx, e.ajs)
	if err != nil {
		return r, err
	}
	password := ingress.NewPassword()
	if _, err := producers.Put(ctx, benchProducer, []string{acct.Alias}, password); err != nil {
		return r, err
	}
	subs, err := e.dialIngress(ctx, addr, caFile, c, acct, password)
	defer func() {
		for _, s := range subs {
			s.close()
		}
	}()
	if err != nil {
		return r, err
	}
	if err := e.warmUp(ctx, subs[0]); err != nil {
		return r, fmt.Errorf("first submission: %w", err)
	}

	var load loadFigures
	fig, err := e.measure(ctx, func() (err error) {
		load, err = e.ingressLoad(ctx, subs)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("load: %w", err)
	}
	r.RelayCPUSPer1kMsgs = per1k(fig.cpu, e.cfg.Messages)
	r.WritesPerMsg = float64(fig.writes) / float64(e.cfg.Messages)
	r.MsgsPerS = float64(e.cfg.Messages) / load.elapsed.Seconds()
	r.AcceptMsgsPerS = float64(e.cfg.Messages) / load.accepted.Seconds()
	r.LoadP50Ms, r.LoadP99Ms = ms(percentile(load.lat, 50)), ms(percentile(load.lat, 99))
	r.AcceptP99Ms = ms(percentile(load.accept, 99))

	lat, err := e.ingressLatency(ctx, subs)
	if err != nil {
		return r, fmt.Errorf("latency: %w", err)
	}
	r.P50Ms, r.P95Ms, r.P99Ms = ms(percentile(lat, 50)), ms(percentile(lat, 95)), ms(percentile(lat, 99))
	if r.PeakRSSMB, err = procPeakRSSMB(e.relay.pid()); err != nil {
		return r, fmt.Errorf("relay serve's peak RSS: %w", err)
	}
	return r, nil
}

// submitter is one submission connection, after STARTTLS and AUTH.
type submitter struct {
	c      *smtp.Client
	from   string
	header []byte // reused for each message's header
	body   []byte // the same body for every message
}

// dialIngress opens c submission connections: STARTTLS (trusting the
// relay's loopback CA) and AUTH PLAIN as the bench producer.
func (e *env) dialIngress(ctx context.Context, addr, caFile string, c int, acct account.Account, password string) ([]*submitter, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("the front door's CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the front door's CA %s holds no certificate", caFile)
	}
	tlsConf := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	body := []byte(crlf(filler(max(e.cfg.Size-ingressHeaderBytes, 1))) + "\r\n")
	subs := make([]*submitter, 0, c)
	for range c {
		cl, err := smtp.DialStartTLS(addr, tlsConf)
		if err != nil {
			return subs, err
		}
		s := &submitter{c: cl, from: acct.Mailbox, body: body}
		subs = append(subs, s)
		if err := cl.Auth(sasl.NewPlainClient("", benchProducer, password)); err != nil {
			return subs, fmt.Errorf("AUTH: %w", err)
		}
	}
	return subs, nil
}

// ingressHeaderBytes is about what the header of a bench submission and
// the front door's Received field take.
const ingressHeaderBytes = 300

// crlf turns filler's LF line ends into CRLF, as a client sends them.
func crlf(s string) string {
	b := make([]byte, 0, len(s)+len(s)/70)
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			b = append(b, '\r')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// send submits one message with the given subject: MAIL, RCPT, DATA.
func (s *submitter) send(subject string) error {
	s.header = fmt.Appendf(s.header[:0], "From: Relay bench <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		s.from, recipient, subject)
	if err := s.c.Mail(s.from, nil); err != nil {
		return err
	}
	if err := s.c.Rcpt(recipient, nil); err != nil {
		return err
	}
	w, err := s.c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(s.header); err != nil {
		return err
	}
	if _, err := w.Write(s.body); err != nil {
		return err
	}
	return w.Close()
}

func (s *submitter) close() {
	if s.c != nil {
		_ = s.c.Quit()
		_ = s.c.Close()
	}
}

// warmUp submits one message and waits for it at the sink. The front door
// learns of accounts from a watch; until it has seen the new account it
// answers 451 4.7.1, so that reply is tried again.
func (e *env) warmUp(ctx context.Context, s *submitter) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	base, err := e.sinkCount(ctx)
	if err != nil {
		return err
	}
	for {
		err := s.send("warm-up")
		var se *smtp.SMTPError
		if err == nil {
			break
		}
		if !errors.As(err, &se) || se.Code != 451 {
			return err
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("%w (last reply: %v)", ctx.Err(), err)
		}
	}
	_, err = e.sinkWait(ctx, base+1)
	return err
}

// loadFigures are the load run's measurements.
type loadFigures struct {
	elapsed  time.Duration   // first MAIL → the sink's last 250
	accepted time.Duration   // first MAIL → the front door's last 250
	lat      []time.Duration // per message: MAIL → the sink's 250
	accept   []time.Duration // per message: MAIL → the front door's 250
}

// ingressLoad sends Messages messages over subs, closed loop.
func (e *env) ingressLoad(ctx context.Context, subs []*submitter) (loadFigures, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	stop := closeOnDone(ctx, subs)
	defer stop()
	n := e.cfg.Messages
	const prefix = "load "
	pub := make([]int64, n) // each index written by one connection
	accept := make([]time.Duration, n)
	base, err := e.sinkCount(ctx)
	if err != nil {
		return loadFigures{}, err
	}
	var next atomic.Int64
	var lastAck atomic.Int64
	errs := make(chan error, len(subs))
	start := time.Now()
	for _, s := range subs {
		go func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				t0 := time.Now()
				pub[i] = t0.UnixNano()
				if err := s.send(prefix + strconv.FormatInt(i, 10)); err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					return
				}
				t1 := time.Now()
				accept[i] = t1.Sub(t0)
				for {
					old := lastAck.Load()
					if t1.UnixNano() <= old || lastAck.CompareAndSwap(old, t1.UnixNano()) {
						break
					}
				}
			}
			errs <- nil
		}()
	}
	var firstErr error
	for range subs {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
			cancel() // the other connections stop too
		}
	}
	if firstErr != nil {
		return loadFigures{}, firstErr
	}
	accepted := time.Unix(0, lastAck.Load()).Sub(start)
	last, err := e.sinkWait(ctx, base+n)
	if err != nil {
		return loadFigures{}, err
	}
	elapsed := last.Sub(start)
	got, err := e.timed(ctx, prefix, pub)
	if err != nil {
		return loadFigures{}, err
	}
	return loadFigures{elapsed: elapsed, accepted: accepted, lat: got, accept: accept}, nil
}

// ingressLatency offers Latency messages at Rate per second over subs:
// message i is due at start + i/Rate whatever the relay does, and its
// time runs from then to the sink's 250.
func (e *env) ingressLatency(ctx context.Context, subs []*submitter) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	stop := closeOnDone(ctx, subs)
	defer stop()
	n := e.cfg.Latency
	const prefix = "latency "
	pub := make([]int64, n) // written before the index is handed out
	base, err := e.sinkCount(ctx)
	if err != nil {
		return nil, err
	}
	due := make(chan int, n)
	interval := time.Second / time.Duration(e.cfg.Rate)
	errs := make(chan error, len(subs)+1)
	go func() {
		defer close(due)
		start := time.Now()
		for i := range n {
			if pause(ctx, time.Until(start.Add(time.Duration(i)*interval))) != nil {
				return
			}
			pub[i] = time.Now().UnixNano()
			due <- i
		}
	}()
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range due {
				if err := s.send(prefix + strconv.Itoa(i)); err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := e.sinkWait(ctx, base+n); err != nil {
		return nil, err
	}
	return e.timed(ctx, prefix, pub)
}

// closeOnDone closes the connections when ctx ends, so a client waiting
// for a reply returns; the returned func cancels that.
func closeOnDone(ctx context.Context, subs []*submitter) func() bool {
	return context.AfterFunc(ctx, func() {
		for _, s := range subs {
			_ = s.c.Close()
		}
	})
}

// ingressPrinter writes ingress results as a table or JSON lines.
type ingressPrinter struct {
	json bool
	out  io.Writer
	head sync.Once
}

const ingressRow = "%-7s %5v %8v %8v %9v %11v %11v %9v %6v %6v %6v %13v %14v %6v %10v\n"

func (p *ingressPrinter) print(r IngressResult) error {
	if p.json {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.out, "%s\n", b)
		return err
	}
	p.head.Do(func() {
		fmt.Fprintf(p.out, ingressRow, "sync", "conns", "messages", "msgs/s", "accept/s", "load p50 ms", "load p99 ms",
			"rate", "p50 ms", "p95 ms", "p99 ms", "accept p99 ms", "relay cpu s/1k", "RSS MB", "writes/msg")
	})
	f := func(format string, v float64) string { return fmt.Sprintf(format, v) }
	_, err := fmt.Fprintf(p.out, ingressRow, r.Sync, r.Conns, r.Messages, f("%.0f", r.MsgsPerS), f("%.0f", r.AcceptMsgsPerS),
		f("%.1f", r.LoadP50Ms), f("%.1f", r.LoadP99Ms), r.Rate, f("%.1f", r.P50Ms), f("%.1f", r.P95Ms), f("%.1f", r.P99Ms),
		f("%.1f", r.AcceptP99Ms), f("%.3f", r.RelayCPUSPer1kMsgs), f("%.0f", r.PeakRSSMB), f("%.2f", r.WritesPerMsg))
	return err
}
