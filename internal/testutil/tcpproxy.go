package testutil

import (
	"io"
	"net"
	"sync"
	"testing"
)

// TCPProxy forwards the TCP connections it accepts on loopback to a
// server, each over a connection of its own, through the test's own
// functions: a test stands it between a client and a real server to
// hold, drop or swallow what passes at one point of a protocol, with no
// hook in the code under test.
type TCPProxy struct {
	Addr string // host:port, for the client to dial

	mu    sync.Mutex
	conns []net.Conn // both ends of every pair open since the last CloseConns
	wg    sync.WaitGroup
}

// StartTCPProxy listens on a free loopback port and forwards every
// connection to target (host:port): up copies what the client sends to
// the server (dst the server, src the client), down what the server
// answers (dst the client, src the server); nil copies as it comes. When
// up returns, the server's end is closed; when down returns, the
// client's. When the test ends it stops accepting, closes every
// connection and waits for up and down to return: a test whose up or
// down may wait on something else lets it go in a cleanup of its own,
// registered after StartTCPProxy (cleanups run last first).
func StartTCPProxy(t testing.TB, target string, up, down func(dst io.Writer, src io.Reader)) *TCPProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &TCPProxy{Addr: ln.Addr().String()}
	if up == nil {
		up = copyAll
	}
	if down == nil {
		down = copyAll
	}
	accepting := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-accepting // no connection is added after this
		p.CloseConns()
		p.wg.Wait()
	})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); down(c, s); c.Close() }()
			go func() { defer p.wg.Done(); up(s, c); s.Close() }()
		}
	}()
	return p
}

// CloseConns closes every connection open now, both ends, as a server
// killed or a NAT entry gone would end it for the client (which may
// connect again: the proxy goes on accepting).
func (p *TCPProxy) CloseConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func copyAll(dst io.Writer, src io.Reader) { _, _ = io.Copy(dst, src) }
