package ingress

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/clock"
	"relay365/internal/pki"
)

// deadlineConn records the deadlines set on a connection.
type deadlineConn struct {
	net.Conn
	mu  sync.Mutex
	set []time.Time
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.set = append(c.set, t)
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

// TestRefuseTLSOneDeadline: on the implicit TLS port the handshake and the
// 421 share one deadline (refuseWithin), as refuseTLS says. refuse set a
// fresh one after the handshake, so a client that stalled the handshake
// and then did not read held the refusal, its goroutine and its file
// descriptor for twice refuseWithin.
func TestRefuseTLSOneDeadline(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Server("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		metrics: newMetrics(prometheus.NewRegistry()),
		log:     zerolog.Nop(),
		deps:    Deps{Clock: clock.Real()},
		smtp:    &smtp.Server{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}},
	}
	server, client := net.Pipe()
	dc := &deadlineConn{Conn: server}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.refuseTLS(dc, "too many connections")
	}()
	tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
	r := bufio.NewReader(tc)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "421 4.7.0 too many connections") {
		t.Fatalf("reply %q, want the 421", line)
	}
	_, _ = io.Copy(io.Discard, r) // the close_notify, then the close
	_ = client.Close()
	<-done
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if len(dc.set) != 1 {
		t.Fatalf("%d deadlines set on a refused TLS connection (%v), want one for the handshake and the reply together", len(dc.set), dc.set)
	}
}
