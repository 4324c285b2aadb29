package submit_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/submit"
)

// GetFor hands out a session only for the endpoint the token is bound to:
// a pool configured (meanwhile) for another endpoint dials nothing.
func TestPoolGetForOtherEndpointDialsNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })

	p := submit.NewPool(&submit.Transport{DialTimeout: time.Second}, time.Minute, nil)
	defer p.Close()
	p.Configure(submit.Endpoint{Addr: ln.Addr().String()}, "alerts@contoso.com", 3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := p.GetFor(ctx, "token", submit.Endpoint{Addr: "smtp.office365.com:587"})
	if !errors.Is(err, submit.ErrEndpointChanged) || s != nil {
		t.Fatalf("GetFor another endpoint = %v, %v; want ErrEndpointChanged", s, err)
	}
	// The configured endpoint is dialled (and fails here: no SMTP server).
	if _, err := p.GetFor(ctx, "token", submit.Endpoint{Addr: ln.Addr().String()}); err == nil || errors.Is(err, submit.ErrEndpointChanged) {
		t.Fatalf("GetFor the configured endpoint: %v", err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections accepted, want the 1 for the configured endpoint", n)
	}
}
