package queue

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Defaults of the embedded server, shared by relay serve's flags, the
// daemon's Config.Defaults and the clients that reach it on one host.
const (
	// DefaultListen is the embedded server's client address: loopback.
	DefaultListen = "127.0.0.1:4222"
	// DefaultURL is where clients on the same host find it.
	DefaultURL = "nats://" + DefaultListen
	// DefaultSync fsyncs before every acknowledgement (docs/design.md §7).
	DefaultSync = "always"
	// MaxPayload is the embedded server's max_payload: the largest NATS
	// message, and so the largest inline JSON message a plain `nats pub`
	// can queue. Larger messages go through the body store (docs/design.md
	// §3.5), which every producer of the project uses above 256 KiB. A
	// worker decodes an inline message whole (its NATS copy, the JSON
	// reader's buffer, the decoded body: about three times its size), so
	// this bounds what one inline message can cost the relay's memory.
	// 8 MiB is the largest value NATS recommends; the default, 1 MiB,
	// would refuse inline messages the relay used to take.
	MaxPayload = 8 << 20
)

// EmbeddedConfig configures the in-process JetStream server used when no
// RELAY_NATS_URL is given (and by every test).
type EmbeddedConfig struct {
	// Listen is host:port for NATS clients; port -1 picks a free one
	// (port 0 would mean 4222 to nats-server).
	Listen string
	// StoreDir holds the JetStream file store. Required.
	StoreDir string
	// Sync is "always" (fsync before every acknowledgement, the default)
	// or a duration between syncs, trading crash safety for speed.
	Sync string
	// Users are the nkey users the server admits, with their
	// permissions. With none, it admits anyone (tests of other
	// packages); the daemon always gives them (roles.EnsureSeeds).
	Users []*server.NkeyUser
	// TLS, when set, is the client listener's certificate: clients must
	// speak TLS. A listener other hosts can reach requires it.
	TLS *tls.Config
}

// IsLoopback reports whether addr (host:port) listens on loopback only.
// An empty host or an unspecified address listens on every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckListen checks a listener address as net.Listen reads it: host:port,
// the port a number up to 65535 (0: any free port), so a bad one stops a
// command at start instead of after it has started other listeners.
func CheckListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	// A number, not net.LookupPort: that takes "" as 0 (any port) and
	// service names, which the embedded server's own parse refuses after
	// start-up has begun (exit 1) and which nobody means for these.
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}

// ParseSync checks a --nats-sync value.
func ParseSync(s string) (always bool, every time.Duration, err error) {
	if s == "" || s == DefaultSync {
		return true, 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return false, 0, fmt.Errorf("--nats-sync %q: want \"always\" or a positive duration such as 1s", s)
	}
	return false, d, nil
}

// StartEmbedded starts a JetStream-enabled nats-server and waits until it
// accepts connections.
func StartEmbedded(c EmbeddedConfig) (*server.Server, error) {
	if c.StoreDir == "" {
		return nil, errors.New("embedded NATS: a store directory is required")
	}
	host, portStr, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen %q: want host:port: %v", c.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("--nats-listen %q: bad port", c.Listen)
	}
	if port == 0 {
		port = -1 // nats-server reads 0 as 4222
	}
	if port > 0 {
		// nats-server reports a port it cannot listen on only in its log,
		// which is off here: the wait below would take 10 s and could
		// only guess why. Listening once first gives the system's reason
		// at once (a port in use, a privileged port).
		l, err := net.Listen("tcp", net.JoinHostPort(host, portStr))
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %s: %v (another relay serve or sandbox? choose another port with --nats-listen)", c.Listen, err)
		}
		l.Close()
	}
	always, every, err := ParseSync(c.Sync)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName:   "relay365-embedded",
		Host:         host,
		Port:         port,
		JetStream:    true,
		StoreDir:     c.StoreDir,
		SyncAlways:   always,
		SyncInterval: every,
		NoSigs:       true,
		NoLog:        true,
		MaxPayload:   MaxPayload,
		Nkeys:        c.Users,
	}
	if c.TLS != nil {
		opts.TLSConfig, opts.TLS = c.TLS, true
		opts.TLSTimeout = 5 // seconds
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s (is the port in use?)", c.Listen)
	}
	return ns, nil
}
