package pacing_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/clock"
	"relay365/internal/pacing"
	"relay365/internal/queue/queuetest"
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clk := clock.NewFake(time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC))
	proxy := startAnswerDropper(t, env.Server.Addr().String())
	p, err := pacing.Open(ctx, queuetest.Connect(t, "nats://"+proxy.Addr), clk)
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
		o, err := pacing.Open(ctx, env.JS, clk)
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
