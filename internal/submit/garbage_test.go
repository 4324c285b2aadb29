package submit_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"relay365/internal/submit"
	"relay365/internal/termsafe"
)

// TestUnreadableReplyIsBoundedAndClean: a line that is no SMTP reply (a
// greeting that does not start with a code, here what someone on the
// path writes before STARTTLS) is quoted by net/textproto in its error.
// What the SMTPError prints (the log line, the pause reason on /status,
// a dead letter) is one bounded line without control characters, as a
// reply's text is.
func TestUnreadableReplyIsBoundedAndClean(t *testing.T) {
	addr := serveOne(t, func(c net.Conn) {
		c.Write([]byte("\x1b]0;owned\x07\x1b[2J" + strings.Repeat("y", 64<<10) + "\r\n"))
		// Read until the client hangs up.
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := (&submit.Transport{}).Dial(ctx, submit.Endpoint{Addr: addr}, "alerts@contoso.com", "token")
	var se *submit.SMTPError
	if !errors.As(err, &se) || se.Class != submit.ClassTransient {
		t.Fatalf("want a transient SMTP error, got %v", err)
	}
	msg := err.Error()
	if i := termsafe.Index(msg); i >= 0 {
		t.Errorf("the error holds a control character at %d: %q", i, msg[max(0, i-20):min(len(msg), i+20)])
	}
	if len(msg) > 1024 {
		t.Errorf("the error is %d bytes long", len(msg))
	}
}

// TestEndlessReplyIsRefused: a server (or someone on the path before
// STARTTLS) that sends a reply line with no end is not read into memory
// until the command timeout: past a bound the reply is refused and the
// connection closed. The command timeout here is long, so only the bound
// ends the exchange before the test's deadline.
func TestEndlessReplyIsRefused(t *testing.T) {
	addr := serveOne(t, func(c net.Conn) {
		if _, err := c.Write([]byte("220-")); err != nil {
			return
		}
		chunk := []byte(strings.Repeat("y", 32<<10))
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := (&submit.Transport{CommandTimeout: time.Hour}).Dial(ctx, submit.Endpoint{Addr: addr}, "alerts@contoso.com", "token")
	var se *submit.SMTPError
	if !errors.As(err, &se) || se.Class != submit.ClassTransient || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("want a transient error about a reply too long, got %v", err)
	}
}

// serveOne listens on loopback and gives the first connection to serve,
// closing it after; it returns the address.
func serveOne(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String()
}
