package ingress_test

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestCloseMidDataQueuesNothingAndLeavesNothing: Close while a client is in
// the middle of DATA (a large message streaming into the body store): the
// client gets no 250 (its connection closes, so it sends again), nothing
// is queued, and no session goroutine is left behind.
func TestCloseMidDataQueuesNothingAndLeavesNothing(t *testing.T) {
	f := startFrontDoor(t, nil)
	baseline := runtime.NumGoroutine()
	c := f.login("alertmanager", alertsPassword)
	if err := c.Mail("alerts@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ops@fabrikam.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	head := "From: alerts@contoso.com\r\nTo: ops@fabrikam.com\r\nSubject: cut\r\n\r\n"
	line := strings.Repeat("x", 998) + "\r\n"
	if _, err := w.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	for range 2048 { // 2 MB: past the session's buffer, into the body store
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.srv.Close(); err != nil {
		t.Fatal(err)
	}
	for range 64 {
		if _, err = w.Write([]byte(line)); err != nil {
			break
		}
	}
	if err == nil {
		err = w.Close()
	}
	if err == nil {
		t.Fatal("the message was acknowledged after Close")
	}
	c.Close()
	if q := f.queued(); len(q) != 0 {
		t.Fatalf("%d messages queued from a DATA cut by Close", len(q))
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for runtime.NumGoroutine() > baseline {
		select {
		case <-f.ctx.Done():
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before the session:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		case <-tick.C:
		}
	}
}
