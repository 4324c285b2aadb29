package relaycmd_test

import (
	"strings"
	"testing"
	"time"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// A replay whose PubAck came but whose removal from MAIL_DLQ failed (the
// stream refuses deletes here; a timeout does the same) leaves the dead
// letter beside its queued copy. A purge then must not delete the body
// the queued copy names: that copy is mail the relay still has to send.
func TestDLQPurgeKeepsBodyOfQueuedReplay(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := store.Put(ctx, strings.NewReader("Subject: big\r\n\r\n"+strings.Repeat("0123456789\r\n", 50000)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: "big-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref}
	data, _ := m.Encode()
	env.DeadLetter(t, ctx, "alerts", "big-1", data, queue.DeadLetter{ID: "big-1", Account: "alerts", Reason: "test", Class: "transient"})

	dlq, err := env.JS.Stream(ctx, queue.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	cfg := dlq.CachedInfo().Config
	cfg.DenyDelete = true
	if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("replay with the removal refused: exit %d\n%s%s", code, out, errOut)
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	if info, _ := mail.Info(ctx); info.State.Msgs != 1 {
		t.Fatalf("MAIL holds %d messages after the replay, want its copy", info.State.Msgs)
	}
	if code, out, errOut := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 {
		t.Fatalf("purge: %d %s%s", code, out, errOut)
	}
	rc, err := store.Open(ctx, ref)
	if err != nil {
		t.Fatalf("the body of the message queued in MAIL was deleted by the purge: %v", err)
	}
	rc.Close()
	names, _ := store.Names(ctx, time.Now().Add(time.Hour))
	if len(names) != 1 || names[0] != ref.Object {
		t.Fatalf("bodies after the purge %v, want %s", names, ref.Object)
	}
}
