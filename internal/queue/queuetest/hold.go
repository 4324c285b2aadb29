package queuetest

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"

	"relay365/internal/testutil"
)

// HoldProxy forwards NATS client connections to a server, as a TCP proxy
// would, and holds the first publish on a subject that starts with a
// given prefix until Release: what the client sent before it reaches the
// server, it and what follows wait. A test uses it to stop a command at
// one point of its protocol (a replay between reading its dead letter
// and queuing the copy) and run another against the server meanwhile,
// with no hook in the code under test and no sleep.
type HoldProxy struct {
	URL string // nats://127.0.0.1:port, for the client to hold

	// Held is closed when the publish is held.
	Held chan struct{}

	release  chan struct{}
	releaseO sync.Once
	holdO    sync.Once
	match    []byte
}

// StartHoldProxy proxies to the server at url (nats://host:port) and
// holds the first publish on prefix+"..." ("mail.send."). Everything is
// released and closed when the test ends.
func StartHoldProxy(t testing.TB, url, prefix string) *HoldProxy {
	t.Helper()
	p := &HoldProxy{Held: make(chan struct{}), release: make(chan struct{}), match: []byte("PUB " + prefix)}
	tp := testutil.StartTCPProxy(t, strings.TrimPrefix(url, "nats://"), p.forward, nil)
	t.Cleanup(p.Release) // before the proxy's own: a held forward returns
	p.URL = "nats://" + tp.Addr
	return p
}

// Release lets the held publish (and what followed it) through.
func (p *HoldProxy) Release() { p.releaseO.Do(func() { close(p.release) }) }

// forward copies the client's bytes to the server, stopping at the first
// read that holds a matching publish (PUB or HPUB) until Release. The
// last bytes of each read are kept to find a command split between two.
func (p *HoldProxy) forward(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	var tail []byte
	for {
		n, err := src.Read(buf)
		if n > 0 {
			seen := append(tail, buf[:n]...)
			out := buf[:n]
			if i := bytes.Index(seen, p.match); i >= 0 {
				var werr error
				p.holdO.Do(func() {
					// What came before the publish goes on; it waits.
					before := max(0, i-len(tail))
					if _, werr = dst.Write(out[:before]); werr == nil {
						out = out[before:]
						close(p.Held)
						<-p.release
					}
				})
				if werr != nil {
					return
				}
			}
			if _, werr := dst.Write(out); werr != nil {
				return
			}
			tail = append(tail[:0], seen[max(0, len(seen)-len(p.match)):]...)
		}
		if err != nil {
			return
		}
	}
}
