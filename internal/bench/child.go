package bench

// The children's side: `relay bench-child sink` and `relay bench-child
// ceiling`, run by the bench as separate processes of the same binary
// (proc.go starts them). They talk to the bench over their standard
// streams, one JSON object a line, and the sink also over a small HTTP
// control API on loopback.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/submit"
)

// ChildCommand is the hidden subcommand that runs a child:
// `relay bench-child sink|ceiling`.
const ChildCommand = "bench-child"

// ChildEnv is set (to "1") in the environment of every child, so a test
// binary that re-executes itself knows to run the relay command line
// instead of its tests (see bench's TestMain).
const ChildEnv = "RELAY365_BENCH_CHILD"

// timedPrefixes are the subjects whose acceptance time the sink keeps:
// the latency runs' and the ingress load run's.
var timedPrefixes = []string{"latency ", "load "}

// sinkReady is the sink's first stdout line.
type sinkReady struct {
	SMTP      string `json:"smtp"`      // 127.0.0.1:PORT, STARTTLS and XOAUTH2
	Authority string `json:"authority"` // the identity platform, http://127.0.0.1:PORT
	CAFile    string `json:"ca_file"`   // PEM CA of the SMTP certificate
	Control   string `json:"control"`   // http://127.0.0.1:PORT, the control API
}

// RunChild runs one child: args are what follows the hidden subcommand.
func RunChild(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("bench-child: want sink or ceiling")
	}
	switch args[0] {
	case "sink":
		switch {
		case len(args) == 2:
			return runSink(ctx, args[1], false, stdin, stdout)
		case len(args) == 3 && args[2] == sinkO365:
			return runSink(ctx, args[1], true, stdin, stdout)
		}
		return errors.New("bench-child sink: want the sink's directory, and " + sinkO365 + " for Office 365's limits")
	case "ceiling":
		return runCeiling(ctx, stdin, stdout)
	}
	return fmt.Errorf("bench-child: unknown child %q: want sink or ceiling", args[0])
}

// sinkState is what the sink's control API reports.
type sinkState struct {
	mu       sync.Mutex
	accepted int
	lastNs   int64            // acceptance time of the last message
	times    map[string]int64 // timed subjects → acceptance time
	changed  chan struct{}    // closed and replaced on each acceptance
}

func (s *sinkState) accept(m fakeo365.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted++
	s.lastNs = m.Time.UnixNano()
	for _, p := range timedPrefixes {
		if strings.HasPrefix(m.Subject, p) {
			s.times[m.Subject] = s.lastNs
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// sinkCount is the control API's answer to GET /wait and GET /count.
type sinkCount struct {
	Accepted int   `json:"accepted"`
	LastNs   int64 `json:"last_ns"`
}

// sinkO365 is the sink's optional argument for Office 365's limits.
const sinkO365 = "o365"

// runSink runs the fake Office 365 until stdin closes (the bench closes
// it, or dies) or ctx ends: with its limits off, or with o365 Office 365's
// (30 messages a minute and 3 connections per mailbox, the fake's
// defaults) for `relay bench --accounts`, which counts the refusals.
func runSink(ctx context.Context, dir string, o365 bool, stdin io.Reader, stdout io.Writer) error {
	st := &sinkState{times: map[string]int64{}, changed: make(chan struct{})}
	// Nothing kept but the count and the timed subjects' acceptance times.
	cfg := fakeo365.Config{Dir: dir, CountOnly: true, OnAccept: st.accept}
	if !o365 {
		// No pacing, no per-mailbox connection limit.
		cfg.PerMinute, cfg.PerDay, cfg.MaxConns = -1, -1, -1
	}
	fake, err := fakeo365.Start(cfg)
	if err != nil {
		return fmt.Errorf("fake Office 365: %w", err)
	}
	defer fake.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	// GET /wait?n=N: once N messages were accepted, the count and the
	// last one's acceptance time (the bench waits for exactly its total,
	// so that is the Nth's).
	mux.HandleFunc("GET /wait", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			http.Error(w, "n: "+err.Error(), http.StatusBadRequest)
			return
		}
		for {
			st.mu.Lock()
			c, ch := sinkCount{Accepted: st.accepted, LastNs: st.lastNs}, st.changed
			st.mu.Unlock()
			if c.Accepted >= n {
				_ = json.NewEncoder(w).Encode(c)
				return
			}
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		c := sinkCount{Accepted: st.accepted, LastNs: st.lastNs}
		st.mu.Unlock()
		_ = json.NewEncoder(w).Encode(c)
	})
	// GET /times?prefix=P: the acceptance times of the subjects with
	// prefix P (one of timedPrefixes).
	mux.HandleFunc("GET /times", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("prefix")
		out := map[string]int64{}
		st.mu.Lock()
		for k, v := range st.times {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
		st.mu.Unlock()
		_ = json.NewEncoder(w).Encode(out)
	})
	// GET /replies: the non-2xx replies the fake decided so far, by code
	// and enhanced code ("432 4.3.2": 1).
	mux.HandleFunc("GET /replies", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(fake.Replies())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	ready := sinkReady{SMTP: fake.SMTPAddr(), Authority: fake.AuthorityURL(), CAFile: fake.CAFile(), Control: "http://" + ln.Addr().String()}
	if err := json.NewEncoder(stdout).Encode(ready); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(eof)
	}()
	select {
	case <-eof:
	case <-ctx.Done():
	}
	return nil
}

// ceilingJob is what the bench hands the ceiling child on stdin (not on
// its command line: it holds an access token).
type ceilingJob struct {
	Addr     string `json:"addr"`
	CAFile   string `json:"ca_file"`
	Mailbox  string `json:"mailbox"`
	Token    string `json:"token"`
	Conns    int    `json:"conns"`
	Messages int    `json:"messages"`
	Size     int    `json:"size"`
}

// ceilingDone is the ceiling child's one stdout line.
type ceilingDone struct {
	ElapsedNs int64 `json:"elapsed_ns"`
}

// runCeiling sends the job's messages straight to the sink over plain
// go-smtp connections and prints the time it took.
func runCeiling(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	var job ceilingJob
	if err := json.NewDecoder(bufio.NewReader(stdin)).Decode(&job); err != nil {
		return fmt.Errorf("ceiling job: %w", err)
	}
	ring, err := ceilingRing(job)
	if err != nil {
		return err
	}
	pem, err := os.ReadFile(job.CAFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no certificate", job.CAFile)
	}
	host, _, _ := net.SplitHostPort(job.Addr)
	tlsConf := &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	errs := make(chan error, job.Conns)
	start := time.Now()
	for range job.Conns {
		go func() {
			errs <- sendDirect(ctx, job.Addr, tlsConf, job.Mailbox, job.Token, ring, &next, int64(job.Messages))
		}()
	}
	var first error
	for range job.Conns {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	if first != nil {
		return first
	}
	return json.NewEncoder(stdout).Encode(ceilingDone{ElapsedNs: int64(time.Since(start))})
}

// ceilingRing is the ceiling's messages: rendered as the relay renders
// them, or for large sizes streamed as they are sent (largeContent).
func ceilingRing(job ceilingJob) ([]content, error) {
	if large(job.Size) {
		return []content{{from: job.Mailbox, rcpts: []string{recipient}, open: func() io.Reader {
			return largeContent(job.Mailbox, "ceiling large", job.Size)
		}}}, nil
	}
	var ring []content
	for i := range 16 {
		m := newMessage(job.Mailbox, job.Size, fmt.Sprintf("ceiling-%d", i), fmt.Sprintf("ceiling %d", i))
		r, err := message.Render(m, message.Sender{Mailbox: job.Mailbox}, time.Now())
		if err != nil {
			return nil, err
		}
		ring = append(ring, content{from: r.MailFrom, rcpts: r.Rcpts, open: func() io.Reader { return bytes.NewReader(r.Data) }})
	}
	return ring, nil
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
