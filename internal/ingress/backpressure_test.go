package ingress_test

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/prometheus/client_golang/prometheus"

	"relay365/internal/body"
	"relay365/internal/queue"
	rtestutil "relay365/internal/testutil"
)

// TestFullQueueKeepsNoBody: while MAIL is full a client is answered
// 452 4.3.1 and, as SMTP clients do, sends the same large message again
// and again. Each refused attempt must not leave its body behind: a body
// nothing names stays until the sweep takes it a day later, so a client
// retrying a 35 MB message every few minutes against a full MAIL filled
// the disk that MAIL and the body store share. When room comes back the
// next attempt is queued with its body, the only one stored.
func TestFullQueueKeepsNoBody(t *testing.T) {
	f := startFrontDoor(t, nil)
	att := make([]byte, 1<<20) // past the session's buffer: streamed into the body store
	rand.Read(att)
	mail := bigMail("alerts@contoso.com", "core dump", att)
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	s, err := f.env.JS.Stream(f.ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs = 1 // full: it holds the one above
	if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	const retries = 5
	for range retries {
		wantReply(t, "DATA into a full MAIL", send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, mail), 452, "4.3.1")
	}
	if n := len(f.bodies()); n != 0 {
		t.Fatalf("%d bodies stored after %d attempts refused with 452 (%d MiB nothing names), want 0", n, retries, n)
	}
	cfg.MaxMsgs = -1 // room again
	if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, mail); err != nil {
		t.Fatalf("DATA once MAIL has room: %v", err)
	}
	if q, b := len(f.queued()), len(f.bodies()); q != 2 || b != 1 {
		t.Fatalf("%d queued and %d bodies once MAIL has room, want 2 and 1", q, b)
	}
	if n := ingressCount(t, f.reg, "alertmanager", "full"); n != retries {
		t.Fatalf("full = %v, want %d", n, retries)
	}
}

// TestFullBodyStoreIs452: the body store without room for a large
// message (its stream's limit, or the disk MAIL shares with it) is the
// queue being full, and the client is told so as for MAIL: 452 4.3.1,
// counted as full, not 451 4.3.0 "NATS did not answer", counted as
// unavailable, which sends an operator looking for an outage that is not
// there. Nothing is left of the refused message; when room comes back it
// is queued.
func TestFullBodyStoreIs452(t *testing.T) {
	f := startFrontDoor(t, nil)
	att := make([]byte, 1<<20)
	rand.Read(att)
	mail := bigMail("alerts@contoso.com", "core dump", att)
	s, err := f.env.JS.Stream(f.ctx, body.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = 512 << 10 // room for two chunks of the message's six
	if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	c := f.login("alertmanager", alertsPassword)
	wantReply(t, "DATA into a full body store", send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, mail), 452, "4.3.1")
	if q, b := len(f.queued()), len(f.bodies()); q != 0 || b != 0 {
		t.Fatalf("%d queued and %d bodies after the 452, want none", q, b)
	}
	if n := ingressCount(t, f.reg, "alertmanager", "full"); n != 1 {
		t.Errorf("full = %v, want 1 (unavailable = %v)", n, ingressCount(t, f.reg, "alertmanager", "unavailable"))
	}
	cfg.MaxBytes = -1
	if _, err := f.env.JS.UpdateStream(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, mail); err != nil {
		t.Fatalf("DATA once the body store has room: %v", err)
	}
	if q, b := len(f.queued()), len(f.bodies()); q != 1 || b != 1 {
		t.Fatalf("%d queued and %d bodies once there is room, want 1 and 1", q, b)
	}
}

// TestAbandonedSubmissionsLeaveNothing: 40 clients, from 4 addresses,
// each sends 600 kB of a large message (past the session's buffer, so
// it streams into the body store) and hangs up inside DATA. Once they
// are gone the front door is back where it started: its goroutines, its
// sessions, and the body store empty, no chunk of the abandoned bodies
// left to wait a day for the sweep.
func TestAbandonedSubmissionsLeaveNothing(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword) // one session through, so lazily started parts run
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatal(err)
	}
	c.Close()
	rtestutil.Eventually(t, f.ctx, "the first session to end", func() bool { return gauge(t, f.reg, "relay_ingress_sessions") == 0 })
	baseline := runtime.NumGoroutine()
	chunk := []byte("To: ops@contoso.com\r\nSubject: dump\r\n\r\n" + strings.Repeat(strings.Repeat("q", 76)+"\r\n", 600_000/78))
	var wg sync.WaitGroup
	for i := range 40 {
		c := f.dial(fmt.Sprintf("127.0.0.%d", 20+i%4))
		if err := c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Mail("alerts@contoso.com", nil); err != nil {
				t.Error(err)
				return
			}
			if err := c.Rcpt("ops@contoso.com", nil); err != nil {
				t.Error(err)
				return
			}
			w, err := c.Data()
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = w.Write(chunk)
			c.Close() // hung up inside DATA
		}()
	}
	wg.Wait()
	rtestutil.Eventually(t, f.ctx, "every session to end", func() bool { return gauge(t, f.reg, "relay_ingress_sessions") == 0 })
	rtestutil.Eventually(t, f.ctx, fmt.Sprintf("goroutines back to %d", baseline), func() bool { return runtime.NumGoroutine() <= baseline+2 })
	rtestutil.Eventually(t, f.ctx, "the body store empty", func() bool {
		s, err := f.env.JS.Stream(f.ctx, body.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs == 0
	})
	if n := len(f.queued()); n != 1 {
		t.Fatalf("%d queued, want only the first message", n)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}
