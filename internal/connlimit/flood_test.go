package connlimit_test

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	var inRefusal, peak atomic.Int64
	release := make(chan struct{})
	l, accepted := serve(t, connlimit.Config{Max: 1, Refuse: func(c net.Conn, reason string) {
		n := inRefusal.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release // a client that never answers, until the refusal's deadline
		_ = c.Close()
		inRefusal.Add(-1)
	}})
	defer close(release)
	ln := l.Addr().String()
	dialFrom(t, "127.0.0.1", ln)
	accept(t, accepted) // the one the limit allows
	const flood = 300
	var closed atomic.Int64 // connections the client saw closed without a refusal running
	var wg sync.WaitGroup
	for range flood {
		c := dialFrom(t, "127.0.0.1", ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadAll(c); err == nil {
				closed.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for inRefusal.Load()+closed.Load() < flood && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := inRefusal.Load() + closed.Load(); got < flood {
		t.Fatalf("%d of %d connections over the limit dealt with", got, flood)
	}
	if p := peak.Load(); p > connlimit.MaxRefusing {
		t.Fatalf("%d refusals running at once for %d connections over the limit, want at most %d", p, flood, connlimit.MaxRefusing)
	}
}
