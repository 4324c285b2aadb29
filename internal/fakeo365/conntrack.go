package fakeo365

import (
	"net"
	"sync"
)

// connTracker wraps the SMTP listener to know every open connection. go-smtp
// swaps the session (and the net.Conn, for TLS) at STARTTLS, so counting at
// the socket is the only reliable way to see leaks; it also lets Close shut
// connections that were accepted but not yet registered inside go-smtp.
type connTracker struct {
	net.Listener

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	total  int
	closed bool
}

func newConnTracker(l net.Listener) *connTracker {
	return &connTracker{Listener: l, conns: make(map[*trackedConn]struct{})}
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, owner: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns[tc] = struct{}{}
	l.total++
	return tc, nil
}

// Close closes the listener only; it is idempotent because both Server.Close
// and go-smtp's Shutdown call it.
func (l *connTracker) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closeListenerLocked()
}

func (l *connTracker) closeListenerLocked() error {
	if l.closed {
		return nil
	}
	l.closed = true
	return l.Listener.Close()
}

// closeAll closes the listener and every open connection.
func (l *connTracker) closeAll() error {
	l.mu.Lock()
	err := l.closeListenerLocked()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return err
}

func (l *connTracker) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *connTracker) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *connTracker) forget(c *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

type trackedConn struct {
	net.Conn
	owner *connTracker
	once  sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.owner.forget(c) })
	return err
}
