package relay_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
	"relay365/internal/relay"
)

// TestOneUnmarkedMessagePerSession checks the duplicate window where it
// is made: when Office 365 accepts a message on a connection, the message
// accepted before it on that connection already has its idempotency
// marker. So a crash at any moment finds at most one accepted message per
// session without a marker, and a redelivery repeats at most that many.
// (Without the hold on the end of the content, a session carried the next
// messages while the previous markers were still being written.)
func TestOneUnmarkedMessagePerSession(t *testing.T) {
	const n = 400
	var (
		markers atomic.Pointer[relay.SentMarkers]
		mu      sync.Mutex
		last    = map[uint64]string{} // connection → subject (message id) last accepted
		checked atomic.Int64
		errs    []string
	)
	h := newHarness(t, setup{fake: fakeo365.Config{OnAccept: func(m fakeo365.Message) {
		sm := markers.Load()
		if sm == nil || strings.HasPrefix(m.Subject, "Relay365: ") {
			return // the consent test mail
		}
		mu.Lock()
		prev := last[m.Conn]
		last[m.Conn] = m.Subject
		mu.Unlock()
		if prev == "" {
			return
		}
		// Called before the fake replies 250 to m.
		sent, err := sm.Sent(t.Context(), "win", prev, 0)
		checked.Add(1)
		if err != nil || !sent {
			mu.Lock()
			errs = append(errs, fmt.Sprintf("%s accepted on connection %d before %s, accepted there before it, had its marker (err %v)", m.Subject, m.Conn, prev, err))
			mu.Unlock()
		}
	}}})
	sm, err := relay.OpenSentMarkers(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	markers.Store(sm)
	h.enroll("win", "win@contoso.com", "contoso", func(a *account.Account) { a.MaxConns = 4 })
	for i := range n {
		id := fmt.Sprintf("win-%03d", i)
		h.publish("win", id, id)
	}
	h.waitFor("every message delivered", func() bool { return len(h.delivered()) == n })
	mu.Lock()
	defer mu.Unlock()
	if checked.Load() < n/2 {
		t.Fatalf("only %d messages followed another on its connection; the test checked too little", checked.Load())
	}
	for i, e := range errs {
		if i == 5 {
			t.Errorf("... and %d more", len(errs)-5)
			break
		}
		t.Error(e)
	}
}
