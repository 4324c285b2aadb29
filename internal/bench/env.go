package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/daemon"
	"relay365/internal/fakeo365"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/submit"
	"relay365/internal/token"
)

const (
	tenant    = "contoso.onmicrosoft.com"
	recipient = "ops@fabrikam.com"
	// tokenCalls is how many cached Token calls the token figure is over.
	tokenCalls = 10000
	// publishWindow bounds the relay run's unacknowledged async publishes.
	publishWindow = 256
)

// env is one environment: `relay serve` in process against the fake sink.
type env struct {
	cfg  Config
	sync string
	dir  string
	fake *fakeo365.Server
	d    *daemon.Daemon
	nc   *nats.Conn // the producer's own connection
	js   jetstream.JetStream
	lat  atomic.Pointer[latencies]

	overheadOnce sync.Once
	overhead     int // rendered size minus text size
}

func startEnv(ctx context.Context, cfg Config, syncSetting string) (_ *env, err error) {
	dir, err := os.MkdirTemp(cfg.Dir, "relay-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, sync: syncSetting, dir: dir}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	fakeDir := filepath.Join(dir, "fake")
	if err := os.Mkdir(fakeDir, 0o700); err != nil {
		return nil, err
	}
	// The sink: no pacing, no per-mailbox connection limit, nothing kept
	// but a count (and the latency hook).
	e.fake, err = fakeo365.Start(fakeo365.Config{
		Dir: fakeDir, PerMinute: -1, PerDay: -1, MaxConns: -1, CountOnly: true, OnAccept: e.accepted,
	})
	if err != nil {
		return nil, fmt.Errorf("fake Office 365: %w", err)
	}
	keyFile := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		return nil, err
	}
	// Logs are encoded as in production (info level) and thrown away, so
	// their cost is in the figures.
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	dc := daemon.Config{
		NATSListen: "127.0.0.1:-1", NATSSync: syncSetting, DataDir: filepath.Join(dir, "data"),
		KeyFile: keyFile, HTTPAddr: "off",
	}
	if cfg.Ingress {
		// The SMTP front door on loopback with the daemon's own CA; every
		// bench connection comes from 127.0.0.1, so the per-address limit
		// is the bench's largest connection count.
		dc.SMTP.Listen = "127.0.0.1:0"
		dc.SMTP.MaxConnsPerIP = max(slices.Max(cfg.Conns), ingress.DefaultMaxConnsPerIP)
		dc.SMTP.MaxConns = max(dc.SMTP.MaxConnsPerIP, ingress.DefaultMaxConns)
	}
	e.d, err = daemon.Start(ctx, dc, log)
	if err != nil {
		return nil, fmt.Errorf("relay serve: %w", err)
	}
	if e.nc, err = queue.ConnectWith(e.d.NATSURL, "relay-bench-producer", e.d.ClientOptions(roles.Producer)); err != nil {
		return nil, err
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(publishWindow)); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.d != nil {
		_ = e.d.Close()
	}
	if e.fake != nil {
		_ = e.fake.Close()
	}
	_ = os.RemoveAll(e.dir)
}

// enroll connects account bench-c<c> through consent with c connections
// and pacing limits far above the run, and waits for its lane.
func (e *env) enroll(ctx context.Context, c int) (account.Account, error) {
	alias := fmt.Sprintf("bench-c%d", c)
	a := e.fake.Account(alias, alias+"@contoso.com", tenant)
	a.PerMinute, a.PerDay, a.MaxConns = 1<<30, 1<<30, c
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	if err := (consent.Enroller{Accounts: e.d.Accounts, Store: e.d.Store}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		return a, fmt.Errorf("enroll %s: %w", alias, err)
	}
	if err := e.d.Engine.WaitBound(ctx, alias); err != nil {
		return a, err
	}
	a.Normalize()
	return a, nil
}

// newMessage is a message of a run, its text sized so the rendered
// message is about Config.Size bytes.
func (e *env) newMessage(acct account.Account, id, subject string) *message.Message {
	m := &message.Message{ID: id, Account: acct.Alias, To: []string{recipient}, Subject: subject, Text: "."}
	e.overheadOnce.Do(func() {
		// What rendering adds to the text: headers and MIME structure.
		e.overhead = 400
		if r, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox}, time.Now()); err == nil {
			e.overhead = len(r.Data) - len(m.Text)
		}
	})
	m.Text = filler(max(e.cfg.Size-e.overhead, 1))
	return m
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

// ceiling sends Messages rendered messages straight to the sink over c
// plain go-smtp connections and returns the time it took.
func (e *env) ceiling(ctx context.Context, acct account.Account, c int) (time.Duration, error) {
	tok, err := e.d.TokenClient.Token(ctx, acct.Alias)
	if err != nil {
		return 0, err
	}
	// The same rendered messages the relay sends (a ring of them).
	var ring []content
	if e.cfg.large() {
		ring = e.largeRing(acct)
	}
	for i := 0; len(ring) < 16 && !e.cfg.large(); i++ {
		m := e.newMessage(acct, fmt.Sprintf("ceiling-%d", i), fmt.Sprintf("ceiling %d", i))
		r, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox}, time.Now())
		if err != nil {
			return 0, err
		}
		ring = append(ring, content{from: r.MailFrom, rcpts: r.Rcpts, open: func() io.Reader { return bytes.NewReader(r.Data) }})
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	host, _, _ := net.SplitHostPort(e.fake.SMTPAddr())
	tlsConf := &tls.Config{RootCAs: e.fake.CertPool(), ServerName: host, MinVersion: tls.VersionTLS12}
	var next atomic.Int64
	errs := make(chan error, c)
	base := e.fake.Accepted()
	start := time.Now()
	for range c {
		go func() {
			errs <- sendDirect(ctx, e.fake.SMTPAddr(), tlsConf, acct.Mailbox, tok.Token, ring, &next, int64(e.cfg.Messages))
		}()
	}
	for range c {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(start)
	if got := e.fake.Accepted() - base; got != e.cfg.Messages {
		return 0, fmt.Errorf("the sink accepted %d of %d messages", got, e.cfg.Messages)
	}
	return elapsed, nil
}

// content is one message of the ceiling's ring.
type content struct {
	from  string
	rcpts []string
	open  func() io.Reader
}

// sendDirect is one ceiling connection: STARTTLS and AUTH XOAUTH2 once,
// then MAIL/RCPT/DATA/RSET until the shared counter reaches n.
func sendDirect(ctx context.Context, addr string, tlsConf *tls.Config, user, tok string, ring []content, next *atomic.Int64, n int64) error {
	c, err := smtp.DialStartTLS(addr, tlsConf)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Auth(submit.NewXOAUTH2(user, tok)); err != nil {
		return err
	}
	for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
		r := ring[i%int64(len(ring))]
		if err := c.Mail(r.from, nil); err != nil {
			return err
		}
		for _, rcpt := range r.rcpts {
			if err := c.Rcpt(rcpt, nil); err != nil {
				return err
			}
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, r.open()); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		if err := c.Reset(); err != nil {
			return err
		}
	}
	return c.Quit()
}

// relayRun publishes Messages messages (asynchronously, publishWindow
// unacknowledged at most) and waits for the sink to accept them all: the
// time from the first publish to the last 250.
func (e *env) relayRun(ctx context.Context, acct account.Account) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	payload := func(id, subject string) ([]byte, error) { return e.newMessage(acct, id, subject).Encode() }
	if e.cfg.large() {
		var err error
		if payload, err = e.largePayload(ctx, acct); err != nil {
			return 0, err
		}
	}
	base := e.fake.Accepted()
	subject := queue.Subject(acct.Alias)
	start := time.Now()
	for i := range e.cfg.Messages {
		id := fmt.Sprintf("relay-%s-%d", acct.Alias, i)
		data, err := payload(id, fmt.Sprintf("relay %d", i))
		if err != nil {
			return 0, err
		}
		if _, err := e.js.PublishAsync(subject, data, jetstream.WithMsgID(id), jetstream.WithStallWait(e.cfg.Timeout)); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, fmt.Errorf("publishing: %w", ctx.Err())
	}
	if _, err := e.fake.WaitMessages(ctx, base+e.cfg.Messages); err != nil {
		return 0, fmt.Errorf("%d of %d relayed: %w", e.fake.Accepted()-base, e.cfg.Messages, err)
	}
	return time.Since(start), nil
}

// latencyRun publishes Latency messages at Rate per second, one publish at
// a time as a producer would, and returns each one's publish→250 time.
func (e *env) latencyRun(ctx context.Context, acct account.Account) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	n := e.cfg.Latency
	lat := &latencies{prefix: "latency ", pub: make([]atomic.Int64, n), got: make([]time.Duration, 0, n)}
	e.lat.Store(lat)
	defer e.lat.Store(nil)
	base := e.fake.Accepted()
	interval := time.Second / time.Duration(e.cfg.Rate)
	start := time.Now()
	for i := range n {
		// Open loop: message i is due at start + i×interval whatever the
		// relay does (a late publish goes at once).
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		id := fmt.Sprintf("latency-%s-%d", acct.Alias, i)
		data, err := e.newMessage(acct, id, lat.prefix+strconv.Itoa(i)).Encode()
		if err != nil {
			return nil, err
		}
		lat.pub[i].Store(time.Now().UnixNano())
		if _, err := queue.Publish(ctx, e.js, acct.Alias, id, data); err != nil {
			return nil, err
		}
	}
	if _, err := e.fake.WaitMessages(ctx, base+n); err != nil {
		return nil, fmt.Errorf("%d of %d relayed: %w", e.fake.Accepted()-base, n, err)
	}
	return lat.waitAll(ctx, n)
}

// accepted is the sink's OnAccept hook: it times latency-run messages.
func (e *env) accepted(m fakeo365.Message) {
	lat := e.lat.Load()
	if lat == nil {
		return
	}
	rest, ok := strings.CutPrefix(m.Subject, lat.prefix)
	if !ok {
		return
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || i >= len(lat.pub) {
		return
	}
	d := m.Time.Sub(time.Unix(0, lat.pub[i].Load()))
	lat.mu.Lock()
	lat.got = append(lat.got, d)
	lat.mu.Unlock()
}

// tokenGetP99 times the workers' cached token client.
func (e *env) tokenGetP99(ctx context.Context, alias string) (float64, error) {
	d := make([]time.Duration, tokenCalls)
	for i := range d {
		start := time.Now()
		if _, err := e.d.TokenClient.Token(ctx, alias); err != nil {
			return 0, err
		}
		d[i] = time.Since(start)
	}
	return ms(percentile(d, 99)), nil
}
