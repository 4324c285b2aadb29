package relay_test

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"relay365/internal/account"
)

// freezer forwards TCP to the fake Office 365 until frozen; then it
// forwards nothing more either way, as a network path to Office 365 that
// went dark, and records, per connection, whether the client wrote
// anything after the freeze and whether it closed the connection.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	conns  []*frozenConn
}

type frozenConn struct {
	ended  bool // the connection ended before the freeze (consent's own session)
	wrote  bool // the client wrote after the freeze (its QUIT)
	closed bool // the client closed the connection after the freeze
}

func startFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(t, c)
		}
	}()
	return f
}

func (f *freezer) serve(t *testing.T, c net.Conn) {
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	t.Cleanup(func() { c.Close(); up.Close() })
	fc := &frozenConn{}
	f.mu.Lock()
	f.conns = append(f.conns, fc)
	f.mu.Unlock()
	go func() { // server to client, until the freeze
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			f.mu.Lock()
			frozen := f.frozen
			f.mu.Unlock()
			if n > 0 && !frozen {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for { // client to server, until the freeze
		n, err := c.Read(buf)
		f.mu.Lock()
		frozen := f.frozen
		if frozen && n > 0 {
			fc.wrote = true
		}
		if err != nil {
			fc.closed, fc.ended = frozen, !frozen
		}
		f.mu.Unlock()
		if n > 0 && !frozen {
			if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

// state is how many connections were open at the freeze, how many of
// them the client wrote to after it and how many it has closed.
func (f *freezer) state() (conns, wrote, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if c.ended {
			continue
		}
		conns++
		if c.wrote {
			wrote++
		}
		if c.closed {
			closed++
		}
	}
	return conns, wrote, closed
}

// TestStopWithOffice365GoneDarkClosesSessionsAtOnce: at the end of Run
// every lane's idle sessions are closed with a QUIT that waits up to 2 s
// for its reply. If Office 365 stopped answering (a network path gone
// dark), each QUIT waits its whole 2 s; lanes closed one after another
// made the stop take 2 s per account with an idle session, after the
// grace: 40 accounts overran the 60 s the shipped supervisors give
// before SIGKILL. Every lane's QUITs must be under way at once: here all
// the accounts' sessions have written their QUIT before any of them gives
// up and closes its connection.
func TestStopWithOffice365GoneDarkClosesSessionsAtOnce(t *testing.T) {
	const lanes = 4
	h := newHarness(t, setup{})
	fr := startFreezer(t, h.fake.SMTPAddr())
	for i := range lanes {
		alias := fmt.Sprintf("dark%d", i)
		h.enroll(alias, alias+"@contoso.com", "contoso", func(a *account.Account) { a.SMTPAddr = fr.ln.Addr().String() })
		h.publish(alias, "dark-"+alias, "dark "+alias)
	}
	h.waitFor("every account's message sent and its session idle", func() bool {
		for _, st := range h.engine.Status() {
			if st.InFlight != 0 || st.Sessions != 1 {
				return false
			}
		}
		return len(h.delivered()) == lanes
	})
	h.waitFor("one open connection per account (consent's own closed)", func() bool {
		conns, _, _ := fr.state()
		return conns == lanes
	})
	fr.freeze()
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	h.waitFor("every account's QUIT", func() bool {
		_, wrote, closed := fr.state()
		if closed > 0 && wrote < lanes {
			t.Fatalf("a session gave up on its QUIT and closed before the others had sent theirs (%d of %d sent QUIT): lanes closed one after another", wrote, lanes)
		}
		return wrote == lanes
	})
	<-stopped
}
