package connlimit_test

import (
	"io"
	"net"
	"testing"
	"time"

	"relay365/internal/connlimit"
)

// serve runs l's accept loop and hands every accepted connection to the
// test.
func serve(t *testing.T, cfg connlimit.Config) (*connlimit.Listener, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(ln, cfg)
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	return l, accepted
}

func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func accept(t *testing.T, accepted <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-accepted:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
		return nil
	}
}

// refused reads what the listener told c, to the end (it closes).
func refused(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the refusal: %v", err)
	}
	return string(b)
}

func refuseWithReason(c net.Conn, reason string) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte(reason))
	_ = c.Close()
}

func TestTotalLimit(t *testing.T) {
	l, accepted := serve(t, connlimit.Config{Max: 2, Refuse: refuseWithReason})
	addr := l.Addr().String()
	dialFrom(t, "127.0.0.1", addr)
	first := accept(t, accepted)
	dialFrom(t, "127.0.0.2", addr)
	accept(t, accepted)
	if n := l.Open(); n != 2 {
		t.Fatalf("open %d, want 2", n)
	}
	if got := refused(t, dialFrom(t, "127.0.0.3", addr)); got != connlimit.ReasonTotal {
		t.Fatalf("third connection got %q", got)
	}
	// A closed connection frees its slot; closing twice frees one.
	first.Close()
	first.Close()
	if n := l.Open(); n != 1 {
		t.Fatalf("open %d after a close, want 1", n)
	}
	dialFrom(t, "127.0.0.3", addr)
	accept(t, accepted)
	if got := refused(t, dialFrom(t, "127.0.0.4", addr)); got != connlimit.ReasonTotal {
		t.Fatalf("over the limit again: %q", got)
	}
}

func TestPerIPLimit(t *testing.T) {
	l, accepted := serve(t, connlimit.Config{Max: 10, PerIP: 1, Refuse: refuseWithReason})
	addr := l.Addr().String()
	dialFrom(t, "127.0.0.1", addr)
	accept(t, accepted)
	if got := refused(t, dialFrom(t, "127.0.0.1", addr)); got != connlimit.ReasonPerIP {
		t.Fatalf("second connection from one address got %q", got)
	}
	dialFrom(t, "127.0.0.2", addr)
	accept(t, accepted)
}

// Without Refuse a connection over the limit is closed at once, and
// Accept goes on.
func TestNoRefuseCloses(t *testing.T) {
	l, accepted := serve(t, connlimit.Config{Max: 1})
	addr := l.Addr().String()
	dialFrom(t, "127.0.0.1", addr)
	held := accept(t, accepted)
	if got := refused(t, dialFrom(t, "127.0.0.1", addr)); got != "" {
		t.Fatalf("refused connection got %q", got)
	}
	held.Close()
	dialFrom(t, "127.0.0.1", addr)
	accept(t, accepted)
}

// TestShare: two listeners sharing limits count together, in all and
// per address, and a slot freed on one is usable on the other; a third
// refuses with its own function, and a nil one keeps the first's.
func TestShare(t *testing.T) {
	l, accepted := serve(t, connlimit.Config{Max: 3, PerIP: 2, Refuse: refuseWithReason})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	other := l.Share(ln, nil)
	t.Cleanup(func() { other.Close() })
	onOther := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			onOther <- c
		}
	}()
	dialFrom(t, "127.0.0.1", l.Addr().String())
	first := accept(t, accepted)
	dialFrom(t, "127.0.0.1", other.Addr().String())
	accept(t, onOther)
	if got := refused(t, dialFrom(t, "127.0.0.1", other.Addr().String())); got != connlimit.ReasonPerIP {
		t.Fatalf("a third connection from one address, on the second listener, got %q", got)
	}
	dialFrom(t, "127.0.0.2", other.Addr().String())
	accept(t, onOther)
	if got := refused(t, dialFrom(t, "127.0.0.3", l.Addr().String())); got != connlimit.ReasonTotal {
		t.Fatalf("a fourth connection in all got %q", got)
	}
	if l.Open() != 3 || other.Open() != 3 {
		t.Fatalf("open %d and %d, want 3 for both", l.Open(), other.Open())
	}
	ln3, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	third := l.Share(ln3, func(c net.Conn, reason string) { refuseWithReason(c, "own: "+reason) })
	t.Cleanup(func() { third.Close() })
	go func() {
		for {
			if _, err := third.Accept(); err != nil {
				return
			}
		}
	}()
	if got := refused(t, dialFrom(t, "127.0.0.3", third.Addr().String())); got != "own: "+connlimit.ReasonTotal {
		t.Fatalf("a connection over the limit on a listener with its own refusal got %q", got)
	}
	first.Close()
	dialFrom(t, "127.0.0.3", other.Addr().String())
	accept(t, onOther)
}

// An IPv6 client counts as its /64 (one host commonly has the whole
// network), an IPv4 client as its address.
func TestClient(t *testing.T) {
	for _, tt := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 25}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 25}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1"), Port: 25}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff:ffff:ffff:ffff"), Port: 25}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 25}, "2001:db8:1:3::/64"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 25}, "::/64"},
	} {
		if got := connlimit.Client(tt.addr); got != tt.want {
			t.Errorf("Client(%v) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
