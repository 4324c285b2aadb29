package ingress_test

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"relay365/internal/connlimit"
	"relay365/internal/ingress"
	"relay365/internal/token/tokentest"
)

// TestRefusedConnectionsAreCountedAndTheirLinesBounded: every connection
// the limits refuse is counted, by limit and by whether it got its 421,
// and the log has at most one line for them per interval (which says how
// many it did not log). Before, each answered refusal logged a line of
// its own, however many came, and one closed unanswered (while
// connlimit.MaxRefusing refusals were running) was neither logged nor
// counted.
func TestRefusedConnectionsAreCountedAndTheirLinesBounded(t *testing.T) {
	ingress.HoldRefusals(t, time.Minute)
	f := startFrontDoor(t, func(c *ingress.Config) { c.MaxConns = 1 })
	refused := func(reply string) float64 {
		return tokentest.Metric(t, f.reg, "relay_ingress_refused_connections_total", map[string]string{"limit": "total", "reply": reply})
	}
	lines := func() int { return strings.Count(f.logs.String(), "SMTP connection refused") }
	// readAll reads what the server sends c until it closes.
	readAll := func(c net.Conn) string {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading a refused connection: %v", err)
		}
		return string(b)
	}
	dial := func(addr string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	held := dial(f.addr()) // the one connection the limit allows
	buf := make([]byte, 64)
	if n, err := held.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "220 ") {
		t.Fatalf("greeting %q %v", buf[:n], err)
	}

	// Five answered refusals within one interval: five counted, one line.
	for i := range 5 {
		if got := readAll(dial(f.addr())); !strings.HasPrefix(got, "421 4.7.0 ") {
			t.Fatalf("refusal %d got %q", i, got)
		}
	}
	if n := refused("421"); n != 5 {
		t.Fatalf("relay_ingress_refused_connections_total{limit=total,reply=421} = %v, want 5", n)
	}
	if n := lines(); n != 1 {
		t.Fatalf("%d log lines for 5 refusals within %s, want 1:\n%s", n, 10*time.Second, f.logs.String())
	}

	// MaxRefusing refusals held running (implicit TLS clients that never
	// start the handshake), then one more: closed without a reply, and
	// counted so; past the interval it gets a line that says how many
	// were not logged (the four answered ones above).
	for range connlimit.MaxRefusing {
		dial(f.tlsAddr())
	}
	f.clock.Advance(11 * time.Second)
	// On the same listener: one accept loop takes them in order.
	if got := readAll(dial(f.tlsAddr())); got != "" {
		t.Fatalf("a connection past %d refusals running got %q, want a close without a reply", connlimit.MaxRefusing, got)
	}
	if n := refused("none"); n != 1 {
		t.Fatalf("relay_ingress_refused_connections_total{limit=total,reply=none} = %v, want 1", n)
	}
	if n := lines(); n != 2 || !strings.Contains(f.logs.String(), `"reply":"none","not_logged_before":4`) {
		t.Fatalf("%d log lines, want a second one for the refusal closed unanswered, saying 4 were not logged:\n%s", n, f.logs.String())
	}
}
