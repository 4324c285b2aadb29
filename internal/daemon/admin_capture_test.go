package daemon_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// TestAdminCapturesWorkerRepliesWithAStream documents a limit of the
// permissions, not a defence: the admin may not subscribe to the workers'
// replies (attacks), but it holds the JetStream API, and a stream whose
// subjects are the workers' reply prefix stores what the token service
// answers there, access tokens included. No subject permission sees a
// stream's configuration, so SECURITY.md says the admin is not protected
// against. If this test starts failing, the server has learnt to refuse
// such streams: tighten SECURITY.md's wording back.
func TestAdminCapturesWorkerRepliesWithAStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	conn := func(r roles.Role) *nats.Conn {
		nc, _ := queuetest.ConnectAs(t, url, string(r), as[r])
		return nc
	}
	if _, err := adminJS.CreateStream(ctx, jetstream.StreamConfig{Name: "CAPTURE", Storage: jetstream.MemoryStorage,
		Subjects: []string{roles.Worker.InboxPrefix() + ".>"}}); err != nil {
		t.Skipf("the server refuses a stream on the workers' reply prefix: %v", err)
	}
	// The token service's answer, through allow_responses.
	tokens := conn(roles.Tokens)
	if _, err := tokens.Subscribe("token.get", func(m *nats.Msg) { _ = m.Respond([]byte(`{"access_token":"SECRET-ACCESS"}`)) }); err != nil {
		t.Fatal(err)
	}
	_ = tokens.Flush()
	worker := conn(roles.Worker)
	if _, err := worker.Request("token.get", []byte(`{"account":"alerts"}`), 5*time.Second); err != nil {
		t.Fatalf("a worker's token.get: %v", err)
	}
	// The server stores the captured reply beside delivering it to the
	// worker, not before: wait for it, with the test's deadline.
	st, err := adminJS.Stream(ctx, "CAPTURE")
	if err != nil {
		t.Fatal(err)
	}
	var m *jetstream.RawStreamMsg
	for {
		if m, err = st.GetLastMsgForSubject(ctx, roles.Worker.InboxPrefix()+".>"); err == nil {
			break
		}
		if ctx.Err() != nil || !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Fatalf("the admin's stream holds no reply: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if string(m.Data) != `{"access_token":"SECRET-ACCESS"}` {
		t.Fatalf("captured %q", m.Data)
	}
}
