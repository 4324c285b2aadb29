package testutil

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestTCPProxy: what a client sends passes up, through the test's
// function, to a real server and its answer comes back down; CloseConns
// ends the client's connection, and a new one is forwarded again.
func TestTCPProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // an echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	upper := func(dst io.Writer, src io.Reader) {
		buf := make([]byte, 1024)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(bytes.ToUpper(buf[:n])); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	p := StartTCPProxy(t, ln.Addr().String(), upper, nil)

	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		return c, bufio.NewReader(c)
	}
	roundTrip := func(c net.Conn, r *bufio.Reader, say string) string {
		t.Helper()
		if _, err := io.WriteString(c, say+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%q through the proxy: %v", say, err)
		}
		return line
	}

	c, r := dial()
	if got := roundTrip(c, r, "ping"); got != "PING\n" {
		t.Fatalf("echoed %q, want the server's answer to what up passed on, PING", got)
	}
	p.CloseConns()
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("read %q after CloseConns; want the connection ended", line)
	}
	c2, r2 := dial()
	if got := roundTrip(c2, r2, "again"); got != "AGAIN\n" {
		t.Fatalf("a connection after CloseConns echoed %q, want AGAIN", got)
	}
}
