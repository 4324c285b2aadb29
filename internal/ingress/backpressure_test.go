package ingress_test

import (
	"crypto/rand"
	"testing"

	"relay365/internal/queue"
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
