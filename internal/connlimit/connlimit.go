// Package connlimit bounds the connections a listener has open at once, in
// all and per client address (an IPv6 client's /64: Client), so that clients holding connections open
// without sending (slowloris) cannot use up a server's goroutines and file
// descriptors. The SMTP front door and the HTTP status server share it.
package connlimit

import (
	"net"
	"sync"
)

// Reasons given to Config.Refuse.
const (
	ReasonTotal = "too many connections"
	ReasonPerIP = "too many connections from your address"
)

// Config is a Listener's limits and what it does with a connection over
// one.
type Config struct {
	// Max is how many connections may be open at once in all (> 0).
	Max int
	// PerIP is how many may be open at once from one client address;
	// 0 leaves only Max.
	PerIP int
	// Refuse answers a connection over a limit in the server's protocol
	// and closes it. It runs on a goroutine of its own, so a client that
	// does not read cannot hold up Accept; it should bound its writes with
	// a deadline. At most MaxRefusing run at once; past them, and when
	// nil, the connection is closed at once.
	Refuse func(c net.Conn, reason string)
	// Dropped, when set, is told of each connection over a limit that
	// was closed at once without Refuse (past MaxRefusing, or Refuse
	// nil), so a server can count and log those too: otherwise nothing
	// sees them. It runs on Accept's goroutine, before the close, and
	// must not block.
	Dropped func(reason string)
}

// Listener is a net.Listener whose Accept hands out connections only while
// they are within the limits; one over a limit is given to Config.Refuse
// and Accept goes on waiting for the next. A connection's slot is freed
// when it is closed.
type Listener struct {
	net.Listener
	*limits
	refuse func(c net.Conn, reason string)
}

// MaxRefusing bounds the refusals running at once (Config.Refuse) on a
// Listener and those that Share its limits. Each runs on a goroutine of
// its own and may wait for the client up to its deadline (a TLS
// handshake first, on an implicit TLS port), so without a bound a flood
// of connections over the limit cost a goroutine and a file descriptor
// each for that long: the limit that exists to bound them did not.
// Past it a connection over the limit is closed at once, unanswered: its
// client sees a connection lost and tries again later, as after a 421.
const MaxRefusing = 64

// limits are the counts a Listener, and those that Share it, hold to.
type limits struct {
	cfg Config

	mu       sync.Mutex
	open     int
	byIP     map[string]int
	refusing int
}

// New wraps ln.
func New(ln net.Listener, cfg Config) *Listener {
	return &Listener{Listener: ln, limits: &limits{cfg: cfg, byIP: map[string]int{}}, refuse: cfg.Refuse}
}

// Share wraps ln with l's limits: the connections of both count toward
// one Max and one PerIP, as a server with two listeners (the SMTP front
// door's STARTTLS and implicit TLS ports) has one set of limits, not one
// per listener. refuse answers ln's connections over a limit, as
// Config.Refuse does (a listener speaking TLS from the first byte must
// refuse inside TLS); nil keeps l's.
func (l *Listener) Share(ln net.Listener, refuse func(c net.Conn, reason string)) *Listener {
	if refuse == nil {
		refuse = l.refuse
	}
	return &Listener{Listener: ln, limits: l.limits, refuse: refuse}
}

// Accept returns the next connection within the limits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := Client(c.RemoteAddr())
		l.mu.Lock()
		reason := ""
		switch {
		case l.open >= l.cfg.Max:
			reason = ReasonTotal
		case l.cfg.PerIP > 0 && l.byIP[ip] >= l.cfg.PerIP:
			reason = ReasonPerIP
		default:
			l.open++
			l.byIP[ip]++
		}
		answer := reason != "" && l.refuse != nil && l.refusing < MaxRefusing
		if answer {
			l.refusing++
		}
		l.mu.Unlock()
		if reason == "" {
			return &conn{Conn: c, l: l, ip: ip}, nil
		}
		if !answer {
			if l.cfg.Dropped != nil {
				l.cfg.Dropped(reason)
			}
			_ = c.Close()
			continue
		}
		go func() {
			defer func() {
				l.mu.Lock()
				l.refusing--
				l.mu.Unlock()
			}()
			l.refuse(c, reason)
		}()
	}
}

// Open is the number of connections open now (on l and the listeners
// that Share its limits).
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func (l *Listener) release(ip string) {
	l.mu.Lock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
	l.mu.Unlock()
}

type conn struct {
	net.Conn
	l    *Listener
	ip   string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// Client is what a per-address limit counts a peer as: its IPv4 address,
// or the /64 network of its IPv6 address. One IPv6 host is commonly given
// a whole /64 (RFC 4291 §2.5.1's interface identifiers, RFC 6177), and
// counted address by address it could open connections, or try
// passwords, without end.
func Client(a net.Addr) string {
	host := RemoteIP(a)
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() != nil {
		return host
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// RemoteIP is the address part of a, without the port.
func RemoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
