//go:build crash

package daemon_test

// The SMTP front door's crash acceptance test: 1,000 messages submitted
// over 8 SMTP connections to `relay serve --smtp-listen`, the relay
// SIGKILLed twice mid-stream and restarted; every message that got a 250
// reaches Office 365, none is lost. The clients behave as real MTAs do: a
// message that got no 250 (the connection died under it) is sent again
// on a new connection once the relay is back.
//
// It runs with the other crash test, behind the build tag crash:
//
//	go test -tags crash -run TestCrash -v ./internal/daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relay365/internal/ingress"
	"relay365/internal/queue"
	"relay365/internal/testutil"
)

func TestCrashSMTPIngress(t *testing.T) {
	const (
		n        = 1000
		clients  = 8
		maxConns = 6
		mailbox  = "crash@contoso.com"
		producer = "crash-mta"
		password = "crash test producer password"
	)
	killAt := []int{300, 600} // acknowledged submissions
	kills := len(killAt)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rig := startCrashRig(t, ctx, "crash", mailbox, maxConns)
	prods, err := ingress.OpenProducers(ctx, rig.env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prods.Put(ctx, producer, []string{"crash"}, password); err != nil {
		t.Fatal(err)
	}

	addr := testutil.FreeAddr(t) // the same on every restart, as an MTA's smarthost setting
	rig.serve("--smtp-listen", addr)
	clientTLS := rig.smtpTLS(addr)

	msgs := make([]mtaMessage, n)
	for i := range msgs {
		subject := fmt.Sprintf("ingress-crash-%04d", i)
		msgs[i] = mtaMessage{from: mailbox, to: "ops@fabrikam.com", subject: subject, data: []byte(fmt.Sprintf(
			"From: Crash MTA <%s>\r\nTo: ops@fabrikam.com\r\nSubject: %s\r\nMessage-Id: <%s@mta.crash.test>\r\nDate: %s\r\n\r\nmessage %d of %d\r\n",
			mailbox, subject, subject, time.Now().Format(time.RFC1123Z), i, n))}
	}

	// 8 clients, each with its own connection and every 8th message.
	tally := newMTATally(n)
	holds := make(chan *holdRequest)
	wctx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopClients(); wg.Wait() }()
	for w := range clients {
		m := &mta{addr: addr, tls: clientTLS, user: producer, password: password}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer m.close()
			for i := w; i < n; i += clients {
				if err := m.submit(wctx, msgs[i], i, tally, holds); err != nil {
					tally.fail(fmt.Errorf("client %d, %s: %w", w, msgs[i].subject, err))
					return
				}
			}
		}()
	}

	// Kill at counted moments, each time with one client held mid-DATA:
	// it has had DATA's 354 and sent the content but not the final dot
	// when the relay dies, so the relay cannot have queued its message.
	var held []int
	for k, at := range killAt {
		testutil.Eventually(t, ctx, fmt.Sprintf("%d acknowledged submissions before kill %d", at, k+1), func() bool {
			return tally.acked.Load() >= int64(at)
		})
		h := &holdRequest{held: make(chan int), release: make(chan struct{})}
		select {
		case holds <- h:
		case <-ctx.Done():
			t.Fatalf("no client took the hold before kill %d", k+1)
		}
		select {
		case i := <-h.held:
			held = append(held, i)
		case <-ctx.Done():
			t.Fatalf("no client got mid-DATA before kill %d", k+1)
		}
		rig.kill()
		close(h.release)
		t.Logf("kill %d after %d acknowledged submissions (%s held mid-DATA)", k+1, tally.acked.Load(), msgs[held[k]].subject)
		rig.serve("--smtp-listen", addr)
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("clients still submitting at the deadline: %d of %d acknowledged", tally.acked.Load(), n)
	}
	for _, err := range tally.failures() {
		t.Error(err)
	}
	acked := tally.ackedSet()
	if len(acked) != n {
		t.Errorf("%d of %d messages got a 250", len(acked), n)
	}

	// Every message that got a 250 reaches Office 365, and MAIL drains.
	missing := func() (out []string) {
		seen, _ := rig.delivered()
		for _, i := range acked {
			if seen[msgs[i].subject] == 0 {
				out = append(out, msgs[i].subject)
			}
		}
		return out
	}
	wait, stopWait := context.WithTimeout(ctx, 60*time.Second)
	defer stopWait()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for (len(missing()) > 0 || !rig.mailDrained()) && wait.Err() == nil {
		select {
		case <-wait.Done():
		case <-tick.C:
		}
	}
	if lost := missing(); len(lost) > 0 {
		t.Errorf("%d acknowledged messages never reached Office 365: %v", len(lost), lost[:min(len(lost), 20)])
	}
	if !rig.mailDrained() {
		t.Error("MAIL still holds messages at the deadline")
	}
	rig.stop()

	// The held clients got no 250 from the killed relay (the connection
	// failed, no reply at all), sent the message again, and it arrived.
	seen, delivered := rig.delivered()
	for k, i := range held {
		switch err := tally.heldErr(i); {
		case err == nil:
			t.Errorf("kill %d: %s, held mid-DATA, got a 250 from a killed relay", k+1, msgs[i].subject)
		case errors.As(err, new(*smtp.SMTPError)):
			t.Errorf("kill %d: %s, held mid-DATA, got an SMTP reply from a killed relay: %v", k+1, msgs[i].subject, err)
		}
		if tally.resubmitted(i) == 0 || seen[msgs[i].subject] == 0 {
			t.Errorf("kill %d: %s, cut mid-DATA, was not sent again and delivered (%d resubmissions, %d delivered)",
				k+1, msgs[i].subject, tally.resubmitted(i), seen[msgs[i].subject])
		}
	}
	// Each copy carries the front door's queue id in its Received field:
	// two ids for one subject mean the front door queued it twice, one id
	// delivered twice means the delivery side sent it again.
	ids := map[string]map[string]int{} // subject → front door id → deliveries
	for _, m := range rig.fake.Messages()[rig.base:] {
		id := "?"
		if sm := receivedID.FindSubmatch(m.Data); sm != nil {
			id = string(sm[1])
		} else {
			t.Errorf("%s arrived without the front door's Received field", m.Subject)
		}
		if ids[m.Subject] == nil {
			ids[m.Subject] = map[string]int{}
		}
		ids[m.Subject][id]++
	}
	known := map[string]bool{}
	for _, m := range msgs {
		known[m.subject] = true
	}
	queuedTwice, sentTwice := 0, 0
	for s, byID := range ids {
		if !known[s] {
			t.Errorf("delivered %q, which no client submitted", s)
		}
		queuedTwice += len(byID) - 1
		for _, c := range byID {
			sentTwice += c - 1
		}
	}
	dead, err := queue.ListDeadLetters(ctx, rig.env.JS, queue.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range dead {
		t.Errorf("dead-lettered: %s (%s)", e.ID, e.Reason)
	}

	// Where a copy can come from, each bounded per kill.
	//
	// The front door: a kill between JetStream's PubAck and the client
	// reading the 250 leaves a stored message that its client sends again.
	// A connection has at most one transaction in flight (go-smtp's
	// client does not pipeline across messages, and the server answers
	// one DATA at a time), so a kill makes at most one such copy per
	// client connection, less the held one: its DATA never ended, and its
	// message before had its 250. A 4xx reply (451 when the PubAck came
	// late) may follow a stored publish too, so each one adds one.
	//
	// The delivery side: a kill between Office 365's 250 and the
	// relay_sent marker sends that message again on redelivery: one per
	// SMTP session (maxConns) per kill. That assumes the marker write
	// (one KV round trip) ends before the session's next message gets
	// its 250 (at least two SMTP round trips), as the engine hands the
	// session on right after the 250 (internal/relay/deliver.go).
	queuedBound := kills*(clients-1) + int(tally.transient.Load())
	sentBound := kills * maxConns
	dups := queuedTwice + sentTwice
	fmt.Printf("ingress crash test: %d submitted over %d connections, %d acked (250), %d delivered, "+
		"%d duplicates (%d queued twice by the front door, bound %d; %d sent twice by delivery, bound %d), "+
		"%d resubmissions after a cut transaction (%d cut mid-DATA, %d before DATA), %d 4xx replies, %d dead-lettered\n",
		n, clients, len(acked), delivered, dups, queuedTwice, queuedBound, sentTwice, sentBound,
		tally.cutMidData.Load()+tally.cutBeforeData.Load(), tally.cutMidData.Load(), tally.cutBeforeData.Load(),
		tally.transient.Load(), len(dead))
	if queuedTwice > queuedBound {
		t.Errorf("the front door queued %d messages twice, more than the bound of %d", queuedTwice, queuedBound)
	}
	if sentTwice > sentBound {
		t.Errorf("delivery sent %d messages twice, more than the bound of %d", sentTwice, sentBound)
	}
}

// receivedID finds the front door's queue id in the Received field it
// adds (ingress: "by <host> (Relay365) with ESMTPSA id <id>;").
var receivedID = regexp.MustCompile(`\(Relay365\) with ESMTPSA id ([^;\s]+);`)

type mtaMessage struct {
	from, to, subject string
	data              []byte
}

// holdRequest asks a client to stop in its next transaction with the
// content sent and the final dot not: it sends the message's index on
// held and waits for release (the relay has been killed meanwhile).
type holdRequest struct {
	held    chan int
	release chan struct{}
}

// mtaTally is what the clients saw, read by the test.
type mtaTally struct {
	acked                     atomic.Int64
	cutMidData, cutBeforeData atomic.Int64 // transactions a dead connection cut, after DATA's 354 or before
	transient                 atomic.Int64 // 4xx replies
	mu                        sync.Mutex
	got250                    []bool
	resubmits                 []int
	held                      map[int]error // index → what the held DATA ended with
	errs                      []error
}

func newMTATally(n int) *mtaTally {
	return &mtaTally{got250: make([]bool, n), resubmits: make([]int, n), held: map[int]error{}}
}

func (t *mtaTally) ack(i int) {
	t.mu.Lock()
	t.got250[i] = true
	t.mu.Unlock()
	t.acked.Add(1)
}

func (t *mtaTally) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, err)
}

func (t *mtaTally) failures() []error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.errs
}

func (t *mtaTally) ackedSet() (out []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, ok := range t.got250 {
		if ok {
			out = append(out, i)
		}
	}
	return out
}

func (t *mtaTally) resubmitted(i int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.resubmits[i]
}

func (t *mtaTally) heldErr(i int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.held[i]
}

// mta is one submitting client, as a real MTA behaves: one connection
// (STARTTLS, AUTH PLAIN), opened again when it fails, and a message that
// got no 250 sent again.
type mta struct {
	addr           string
	tls            *tls.Config
	user, password string
	c              *smtp.Client
	unwatch        func() bool
}

// connect opens a connection, trying again every 20ms while the relay is
// down (connection refused) until ctx ends. The connection is closed
// when ctx ends, so no read outlives the test.
func (m *mta) connect(ctx context.Context) error {
	retry := time.NewTicker(20 * time.Millisecond)
	defer retry.Stop()
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "tcp", m.addr)
		if err == nil {
			unwatch := context.AfterFunc(ctx, func() { conn.Close() })
			var c *smtp.Client
			if c, err = smtp.NewClientStartTLS(conn, m.tls); err == nil {
				if err = c.Auth(sasl.NewPlainClient("", m.user, m.password)); err == nil {
					m.c, m.unwatch = c, unwatch
					return nil
				}
				c.Close()
			}
			unwatch()
			conn.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no SMTP session before the deadline (last: %v)", err)
		case <-retry.C:
		}
	}
}

func (m *mta) close() {
	if m.c != nil {
		m.unwatch()
		m.c.Close()
		m.c = nil
	}
}

// submit hands message i over until it gets a 250, reconnecting as
// needed. Between transactions it takes a hold request if one is
// offered, and keeps it until a transaction reaches the point to honour
// it.
func (m *mta) submit(ctx context.Context, msg mtaMessage, i int, tally *mtaTally, holds chan *holdRequest) error {
	var hold *holdRequest
	for {
		if m.c == nil {
			if err := m.connect(ctx); err != nil {
				return err
			}
		}
		if hold == nil {
			select {
			case hold = <-holds:
			default:
			}
		}
		midData, held, err := m.transaction(ctx, msg, i, hold)
		if held {
			tally.mu.Lock()
			tally.held[i] = err
			tally.mu.Unlock()
			hold = nil
		}
		if err == nil {
			tally.ack(i)
			return nil
		}
		// No 250: the message may or may not be queued; only a new
		// transaction on a new connection settles it.
		m.close()
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se) && se.Code >= 500:
			return fmt.Errorf("permanent reply: %w", err)
		case errors.As(err, &se):
			tally.transient.Add(1)
		case midData:
			tally.cutMidData.Add(1)
		default:
			tally.cutBeforeData.Add(1)
		}
		tally.mu.Lock()
		tally.resubmits[i]++
		tally.mu.Unlock()
		if ctx.Err() != nil {
			return fmt.Errorf("no 250 before the deadline (last: %w)", err)
		}
	}
}

// transaction is MAIL, RCPT, DATA on the open connection; nil means the
// final 250. midData: the server had answered DATA with 354 when it
// failed. With hold, it stops after the content, before the final dot,
// until the hold is released (held is then true).
func (m *mta) transaction(ctx context.Context, msg mtaMessage, i int, hold *holdRequest) (midData, held bool, err error) {
	if err := m.c.Mail(msg.from, nil); err != nil {
		return false, false, err
	}
	if err := m.c.Rcpt(msg.to, nil); err != nil {
		return false, false, err
	}
	w, err := m.c.Data()
	if err != nil {
		return false, false, err
	}
	if _, err := w.Write(msg.data); err != nil {
		return true, false, err
	}
	if hold != nil {
		select {
		case hold.held <- i:
			select {
			case <-hold.release:
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}
	return true, hold != nil, w.Close()
}
