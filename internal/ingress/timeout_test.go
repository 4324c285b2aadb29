package ingress_test

import (
	"crypto/tls"
	"encoding/base64"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"relay365/internal/ingress"
)

// rawSession is a STARTTLS session driven line by line, authenticated
// as alertmanager, with MAIL and RCPT done and DATA answered 354.
func rawSession(t *testing.T, f *frontDoor) (*textproto.Conn, net.Conn) {
	t.Helper()
	tc, conn := rawLogin(t, f)
	for _, c := range []struct {
		cmd  string
		code int
	}{{"MAIL FROM:<>", 250}, {"RCPT TO:<ops@contoso.com>", 250}, {"DATA", 354}} {
		if err := tc.PrintfLine("%s", c.cmd); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := tc.ReadResponse(c.code); err != nil {
			t.Fatalf("%s: %v %s", c.cmd, err, msg)
		}
	}
	return tc, conn
}

// rawLogin is a STARTTLS session driven line by line, authenticated as
// alertmanager.
func rawLogin(t *testing.T, f *frontDoor) (*textproto.Conn, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", f.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	tc := textproto.NewConn(conn)
	expect := func(code int, format string, args ...any) {
		t.Helper()
		if format != "" {
			if err := tc.PrintfLine(format, args...); err != nil {
				t.Fatal(err)
			}
		}
		if _, msg, err := tc.ReadResponse(code); err != nil {
			t.Fatalf("%q: %v %s", format, err, msg)
		}
	}
	expect(220, "")
	expect(250, "EHLO client.test")
	expect(220, "STARTTLS")
	tconn := tls.Client(conn, f.tlsConfig())
	_ = tconn.SetDeadline(time.Now().Add(30 * time.Second))
	tc = textproto.NewConn(tconn)
	expect(250, "EHLO client.test")
	_, ir, _ := sasl.NewPlainClient("", "alertmanager", alertsPassword).Start()
	expect(235, "AUTH PLAIN %s", base64.StdEncoding.EncodeToString(ir))
	return tc, tconn
}

// TestSlowDATAIsTimedPerBlock: the session timeout (Config.Timeout,
// 2 minutes by default; "Commands time out after 2 minutes") bounds
// each wait for the client, not the whole DATA: RFC 5321 §4.5.3.2.5
// times a data block, not the message, and the front door's own store
// "may take as long as the client takes to send" (storeBody). A client
// that keeps sending, only slowly (a 35 MB message over a slow uplink),
// must get its 250, not a permanent 554 when the DATA as a whole passes
// the timeout.
func TestSlowDATAIsTimedPerBlock(t *testing.T) {
	const timeout = time.Second
	f := startFrontDoor(t, func(c *ingress.Config) { c.Timeout = timeout })
	tc, _ := rawSession(t, f)
	w := tc.DotWriter()
	if _, err := w.Write([]byte(alertmanagerMail)); err != nil {
		t.Fatal(err)
	}
	// The client keeps sending, a block at a time, each well within the
	// timeout, for three times the timeout in all: a slow link, which
	// the pauses stand for (what is tested, not a wait for the server).
	line := strings.Repeat("x", 76) + "\r\n"
	block := strings.Repeat(line, 16<<10/len(line)+1)
	for start := time.Now(); time.Since(start) < 3*timeout; time.Sleep(timeout / 4) {
		if _, err := w.Write([]byte(block)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if code, msg, err := tc.ReadResponse(250); err != nil {
		t.Fatalf("a slow but steady DATA: %d %s (%v), want 250", code, msg, err)
	}
	if m := f.onlyQueued(); m.Body == nil && len(m.Raw) == 0 {
		t.Fatalf("queued without content: %+v", m)
	}
}

// TestStalledDATAIsATemporaryFailure: a client that stops sending inside
// DATA for longer than the timeout, but is still connected, gets a
// temporary reply (RFC 5321 §4.2.5: the client may try again) and the
// connection closes (421, §3.8), so that what it sends after is not read
// as commands. Nothing is queued. go-smtp answers any error of Data that
// is not an SMTP reply with a permanent 554 5.0.0, which makes a client
// bounce mail it should have retried.
func TestStalledDATAIsATemporaryFailure(t *testing.T) {
	const timeout = time.Second
	f := startFrontDoor(t, func(c *ingress.Config) { c.Timeout = timeout })
	tc, conn := rawSession(t, f)
	w := tc.DotWriter()
	if _, err := w.Write([]byte(alertmanagerMail[:40])); err != nil {
		t.Fatal(err)
	}
	if err := tc.W.Flush(); err != nil {
		t.Fatal(err)
	}
	// The client stalls; the server's timeout answers (ReadResponse waits
	// for that reply, up to the connection's 30 s deadline).
	code, msg, err := tc.ReadResponse(4)
	if err != nil || code/100 != 4 {
		t.Fatalf("a stalled DATA: %d %s (%v), want a 4xx reply", code, msg, err)
	}
	if code != 421 {
		t.Errorf("a stalled DATA: %d %s, want 421 (and the connection closed)", code, msg)
	}
	// The connection is closed: what the client sends next is not read
	// as commands.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.ReadLine(); err == nil {
		t.Errorf("the connection stayed open after the reply to a stalled DATA")
	}
	if n := len(f.queued()); n != 0 {
		t.Fatalf("%d queued from a stalled DATA", n)
	}
}

// TestUnauthenticatedConnectionsEnd: a connection must authenticate within
// the session timeout of its opening. A client that never does, but sends
// a NOOP (or RSET, VRFY, EHLO) before each timeout runs out, held its
// connection for as long as it liked: a few such clients (an address each,
// or a few addresses of an IPv6 network) held every slot of
// --smtp-max-conns and kept every producer out. It now gets 421 and the
// connection closes; an authenticated session is not cut.
func TestUnauthenticatedConnectionsEnd(t *testing.T) {
	const timeout = time.Second
	f := startFrontDoor(t, func(c *ingress.Config) { c.Timeout = timeout })
	conn, err := net.DialTimeout("tcp", f.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	tc := textproto.NewConn(conn)
	if _, _, err := tc.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	// The client sends a command well within the timeout each time (what
	// is tested, not a wait for the server), for five times the timeout.
	var code int
	var msg string
	for start := time.Now(); time.Since(start) < 5*timeout; time.Sleep(timeout / 10) {
		if err = tc.PrintfLine("NOOP"); err != nil {
			break // closed by the server
		}
		if code, msg, err = tc.ReadResponse(250); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatalf("an unauthenticated client sending NOOPs kept its connection for %v, with a timeout of %v", 5*timeout, timeout)
	}
	if code != 421 {
		t.Errorf("the end of an unauthenticated connection: %d %s (%v), want 421", code, msg, err)
	}

	// An authenticated session doing the same is not cut. Its own front
	// door gives it a longer timeout: STARTTLS and AUTH (a password hash)
	// must fit in the login window on a loaded machine under -race.
	const loginTimeout = 3 * time.Second
	f = startFrontDoor(t, func(c *ingress.Config) { c.Timeout = loginTimeout })
	tc, _ = rawLogin(t, f)
	for start := time.Now(); time.Since(start) < 2*loginTimeout; time.Sleep(loginTimeout / 10) {
		if err := tc.PrintfLine("NOOP"); err != nil {
			t.Fatal(err)
		}
		if code, msg, err := tc.ReadResponse(250); err != nil {
			t.Fatalf("an authenticated session's NOOP after %v: %d %s (%v)", time.Since(start), code, msg, err)
		}
	}
}
