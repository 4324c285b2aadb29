package producer_test

import (
	"context"
	"io"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
	"relay365/producer"
)

// dropProxy forwards TCP connections to a NATS server; while drop is on,
// what clients send is swallowed, as by a connection that died without
// the client noticing yet (a server killed, a NAT entry gone).
type dropProxy struct {
	*testutil.TCPProxy
	mu      sync.Mutex
	drop    bool
	dropped int
	changed chan struct{} // closed and replaced on every swallowed write
}

func startDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	p := &dropProxy{changed: make(chan struct{})}
	p.TCPProxy = testutil.StartTCPProxy(t, target, p.upstream, nil)
	return p
}

func (p *dropProxy) upstream(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			drop := p.drop
			if drop {
				p.dropped += n
				close(p.changed)
				p.changed = make(chan struct{})
			}
			p.mu.Unlock()
			if !drop {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// cut closes every connection: the client sees its connection die and
// reconnects (through the proxy, forwarding again).
func (p *dropProxy) cut() {
	p.mu.Lock()
	p.drop = false
	p.mu.Unlock()
	p.CloseConns()
}

// A publish whose connection dies under it, its PUB lost before the
// server read it, got no acknowledgement ever: nats.go resends only what
// it buffered while reconnecting. Publish waited out its whole context
// though the server was back at once. It publishes again (same id, so
// MAIL keeps one copy) when an acknowledgement does not come, and the
// message is queued well inside its context.
func TestPublishLostWithItsConnectionIsSentAgain(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	u, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startDropProxy(t, u.Host)
	nc, err := queue.Connect("nats://"+proxy.Addr, "lost-pub", nats.CustomInboxPrefix(producer.InboxPrefix), nats.ReconnectWait(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p, err := producer.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, alert("before")); err != nil {
		t.Fatal(err)
	}

	proxy.mu.Lock()
	proxy.drop = true
	proxy.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 25*time.Second)
	defer cancel()
	type outcome struct {
		res producer.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.Publish(pctx, alert("lost-1"))
		done <- outcome{res, err}
	}()
	// Wait until the PUB has been swallowed, then let the connection die.
	for {
		proxy.mu.Lock()
		dropped, changed := proxy.dropped, proxy.changed
		proxy.mu.Unlock()
		if dropped > 0 {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("the publish never reached the proxy")
		}
	}
	proxy.cut()

	o := <-done
	if o.err != nil || pctx.Err() != nil {
		t.Fatalf("publish lost with its connection: %+v %v (%s); want it queued before its context ended", o.res, o.err, kind(o.err))
	}
	if n := queued(t, ctx, env.JS); n != 2 {
		t.Fatalf("MAIL holds %d, want 2: the message once", n)
	}
}

// Without a deadline on its context, Publish to a server that is gone
// still ends (JetStream's own default timeout, as the package documents),
// with context.DeadlineExceeded: the attempts that publish again when an
// acknowledgement does not come are bounded by the caller's deadline
// only when there is one.
func TestPublishWithoutDeadlineToAStoppedServerEnds(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	p, err := producer.New(env.NC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, alert("first")); err != nil {
		t.Fatal(err)
	}
	env.Server.Shutdown()
	env.Server.WaitForShutdown()
	done := make(chan error, 1)
	go func() {
		_, err := p.Publish(context.Background(), alert("no-deadline"))
		done <- err
	}()
	select {
	case err := <-done:
		if kind(err) != "timed out" {
			t.Fatalf("%v (%s), want a timeout", err, kind(err))
		}
	case <-ctx.Done():
		t.Fatal("Publish without a deadline to a stopped server had not returned when the test's context ended")
	}
}
