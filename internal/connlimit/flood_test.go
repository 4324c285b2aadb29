package connlimit_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"

	"relay365/internal/connlimit"
)

// TestRefusalsAreBounded: 300 connections over the limit arrive from
// clients that then do nothing. Each refusal runs on a goroutine of its
// own and may wait for the client (the implicit TLS port's refusal runs a
// TLS handshake first), so a flood of connections the limit refused
// still cost a goroutine and a file descriptor each, as many as came
// within the refusal's deadline: the limit that exists to bound them
// did not. Refusals at once must be bounded (connlimit.MaxRefusing); the
// ones past it are closed at once.
func TestRefusalsAreBounded(t *testing.T) {
	const flood = 300
	// dealt counts the connections over the limit dealt with: a refusal
	// running, or a client that saw its connection closed without one.
	// all closes when every one of flood is; the test waits for that, not
	// for a time (go test's -timeout ends a run that never gets there).
	var dealt, inRefusal, peak, dropped atomic.Int64
	all := make(chan struct{})
	count := func() {
		if dealt.Add(1) == flood {
			close(all)
		}
	}
	release := make(chan struct{})
	l, accepted := serve(t, connlimit.Config{Max: 1, Dropped: func(reason string) {
		if reason == connlimit.ReasonTotal {
			dropped.Add(1)
		}
	}, Refuse: func(c net.Conn, reason string) {
		n := inRefusal.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		count()
		<-release // a client that never answers, until the refusal's deadline
		_ = c.Close()
		inRefusal.Add(-1)
	}})
	defer close(release)
	ln := l.Addr().String()
	dialFrom(t, "127.0.0.1", ln)
	accept(t, accepted) // the one the limit allows
	for range flood {
		c := dialFrom(t, "127.0.0.1", ln)
		go func() {
			if _, err := io.ReadAll(c); err == nil {
				select {
				case <-release: // a refusal ended by the test's end
				default:
					count()
				}
			}
		}()
	}
	<-all
	if p := peak.Load(); p > connlimit.MaxRefusing {
		t.Fatalf("%d refusals running at once for %d connections over the limit, want at most %d", p, flood, connlimit.MaxRefusing)
	}
	// Every connection closed unanswered was told to Dropped, with its
	// reason: the refusals still running (the test holds them) plus
	// those dropped are the flood. Dropped runs before Accept goes on,
	// and a client sees its close only after it.
	if got, want := dropped.Load(), flood-inRefusal.Load(); got != want {
		t.Fatalf("Dropped told of %d connections closed unanswered, want %d", got, want)
	}
}
