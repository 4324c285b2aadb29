package ingress

import (
	"net"
	"sync"
	"time"
)

// limitListener bounds the connections open at once, in all and per
// client address, so that a client holding connections open without
// sending (slowloris) cannot use up the relay's goroutines and file
// descriptors. A connection over a limit is told why (RFC 5321 §3.8:
// a server that cannot serve answers 421 and closes) and closed at once;
// Accept goes on.
type limitListener struct {
	net.Listener
	max, perIP int
	onReject   func(reason string)

	mu    sync.Mutex
	open  int
	byIP  map[string]int
	close sync.Once
}

func newLimitListener(ln net.Listener, max, perIP int, onReject func(string)) *limitListener {
	return &limitListener{Listener: ln, max: max, perIP: perIP, onReject: onReject, byIP: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr())
		l.mu.Lock()
		reason := ""
		switch {
		case l.open >= l.max:
			reason = "too many connections"
		case l.byIP[ip] >= l.perIP:
			reason = "too many connections from your address"
		default:
			l.open++
			l.byIP[ip]++
		}
		l.mu.Unlock()
		if reason == "" {
			return &limitedConn{Conn: c, l: l, ip: ip}, nil
		}
		if l.onReject != nil {
			l.onReject(reason)
		}
		go refuse(c, reason)
	}
}

// refuse answers 421 and closes, never waiting long on a client that does
// not read.
func refuse(c net.Conn, reason string) {
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write([]byte("421 4.7.0 " + reason + ", try again later\r\n"))
	_ = c.Close()
}

func (l *limitListener) release(ip string) {
	l.mu.Lock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
	l.mu.Unlock()
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	ip   string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
