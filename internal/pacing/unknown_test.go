package pacing_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/clock"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
	"relay365/internal/testutil"
)

// answerDropper is a TCP proxy in front of a NATS server that can stop
// passing the server's answers on while still passing the client's
// requests: a write the server makes whose answer never arrives, as when
// a connection is lost or a reply times out.
type answerDropper struct {
	*testutil.TCPProxy
	drop atomic.Bool
}

func startAnswerDropper(t *testing.T, to string) *answerDropper {
	t.Helper()
	d := &answerDropper{}
	d.TCPProxy = testutil.StartTCPProxy(t, to, nil, d.answers)
	return d
}

// answers passes the server's answers on to the client unless drop.
func (d *answerDropper) answers(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !d.drop.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestWriteOfUnknownOutcomeIsReadBack: a reservation the server wrote
// but whose answer was lost is a reservation. Taken as failed, it would
// count for a day with no ticket to give it back by (and a Restamp so
// lost would leave its ticket in the wrong slot, for a Release to take
// another reservation's count).
func TestWriteOfUnknownOutcomeIsReadBack(t *testing.T) {
	env := queuetest.Start(t)
	writeOfUnknownOutcome(t, env.Server.Addr().String(), func(url string) jetstream.JetStream { return queuetest.Connect(t, url) }, env.JS)
}

// TestWriteOfUnknownOutcomeIsReadFromTheLeader: the read that decides
// whether a write whose answer was lost landed, and every read of a
// record, asks relay_pacing's stream leader, not a direct get: the answer
// is often lost with the leader, and a replica restarted after an outage
// answers direct gets before it has caught up, without the write (or with
// an older record), so a reservation would be taken as failed and the
// pacer count less than Office 365 does (docs/design.md §7.10). The same
// test as above, as the worker role with its real permissions less its
// direct gets of the bucket.
func TestWriteOfUnknownOutcomeIsReadFromTheLeader(t *testing.T) {
	srv := queuetest.StartRolesWithoutDirectGet(t, "KV_"+pacing.Bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, admin := srv.As(t, roles.Admin)
	if _, err := pacing.Open(ctx, admin, nil); err != nil { // relay setup makes the bucket
		t.Fatal(err)
	}
	_, observer := srv.As(t, roles.Worker)
	writeOfUnknownOutcome(t, srv.Server.Addr().String(), func(url string) jetstream.JetStream {
		_, js := queuetest.ConnectAs(t, url, "test-worker", queue.ConnectOptions{NKeyFile: roles.SeedFile(srv.Dir, roles.Worker), InboxPrefix: roles.Worker.InboxPrefix()})
		return js
	}, observer)
}

// writeOfUnknownOutcome reserves through a proxy to the server at addr
// that drops the answer of one write; connect connects to a URL as the
// pacer's process, other is another process's connection to the server.
func writeOfUnknownOutcome(t *testing.T, addr string, connect func(url string) jetstream.JetStream, other jetstream.JetStream) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clk := clock.NewFake(time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC))
	proxy := startAnswerDropper(t, addr)
	p, err := pacing.Open(ctx, connect("nats://"+proxy.Addr), clk)
	if err != nil {
		t.Fatal(err)
	}
	lim := pacing.Limits{PerMinute: 10, PerDay: 100}
	const mbx = "alerts@contoso.com"
	if _, _, err := p.Reserve(ctx, mbx, 1, lim); err != nil { // the key exists: the next write is an Update
		t.Fatal(err)
	}
	// What another process sees, read fresh each time.
	allow := func() int {
		t.Helper()
		o, err := pacing.Open(ctx, other, clk)
		if err != nil {
			t.Fatal(err)
		}
		n, _, err := o.Peek(ctx, mbx, lim)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := allow(); n != 9 {
		t.Fatalf("allow %d after one reservation, want 9", n)
	}

	proxy.drop.Store(true)
	rctx, rcancel := context.WithCancel(ctx)
	type result struct {
		t   pacing.Ticket
		err error
	}
	done := make(chan result, 1)
	go func() {
		tk, _, err := p.Reserve(rctx, mbx, 1, lim)
		done <- result{tk, err}
	}()
	// The server writes it; its answer is dropped.
	deadline := time.Now().Add(20 * time.Second)
	for allow() != 8 {
		if time.Now().After(deadline) {
			t.Fatal("the reservation never reached the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	proxy.drop.Store(false)
	rcancel() // the caller stops waiting for the answer
	r := <-done
	if r.err != nil {
		t.Fatalf("Reserve written but its answer lost: %v; want the reservation (it counts: allow %d)", r.err, allow())
	}
	if err := p.Release(ctx, r.t); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if n := allow(); n != 9 {
		t.Fatalf("allow %d after giving the reservation back, want 9", n)
	}
}
