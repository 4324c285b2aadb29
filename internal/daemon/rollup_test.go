package daemon_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// TestRollupCannotPurge: a role allowed to publish onto a stream's
// subject can send a message with a Nats-Rollup header, which a stream
// that allows rollups obeys by purging the subject ("sub") or the whole
// stream ("all"). No subject permission sees a header, so SECURITY.md's
// "purging or deleting a stored body" (producer), "purging MAIL or
// MAIL_DLQ" (producer, worker) must hold through the streams' own
// settings. Each role tries, as a publish it is allowed, a rollup of the
// stream behind it; every one must be refused by the server and leave
// what was stored in place.
func TestRollupCannotPurge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	js := map[roles.Role]jetstream.JetStream{}
	for _, r := range []roles.Role{roles.Producer, roles.Worker} {
		_, js[r] = queuetest.ConnectAs(t, url, "attacker-"+string(r), as[r])
	}

	// What the attacks aim at: a stored body (as a producer stores it),
	// queued mail and a dead letter.
	bodies := body.OpenStoreOnly(js[roles.Producer])
	raw := []byte("Subject: kept\r\n\r\n" + strings.Repeat("a body someone queued\r\n", 20000))
	ref, err := bodies.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminJS.Publish(ctx, queue.SubjectPrefix+"alerts", []byte(`{"queued":"mail"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := js[roles.Worker].Publish(ctx, queue.DLQPrefix+"alerts", []byte(`{"dead":"letter"}`)); err != nil {
		t.Fatal(err)
	}
	msgs := func(stream string) uint64 {
		t.Helper()
		return queuetest.Msgs(t, ctx, adminJS, stream)
	}

	for _, a := range []struct {
		role            roles.Role
		subject, stream string
		rollup          string
	}{
		{roles.Producer, "$O." + body.Bucket + ".C.rollup", body.StreamName, jetstream.MsgRollupAll},
		{roles.Producer, "$O." + body.Bucket + ".M.rollup", body.StreamName, jetstream.MsgRollupAll},
		{roles.Producer, queue.SubjectPrefix + "alerts", queue.StreamMail, jetstream.MsgRollupAll},
		{roles.Producer, queue.SubjectPrefix + "alerts", queue.StreamMail, jetstream.MsgRollupSubject},
		{roles.Worker, queue.SubjectPrefix + "alerts", queue.StreamMail, jetstream.MsgRollupAll},
		{roles.Worker, queue.DLQPrefix + "alerts", queue.StreamDLQ, jetstream.MsgRollupAll},
		{roles.Worker, queue.DLQPrefix + "alerts", queue.StreamDLQ, jetstream.MsgRollupSubject},
	} {
		before := msgs(a.stream)
		m := &nats.Msg{Subject: a.subject, Header: nats.Header{}, Data: []byte("x")}
		m.Header.Set(jetstream.MsgRollup, a.rollup)
		if _, err := js[a.role].PublishMsg(ctx, m); err == nil {
			t.Errorf("a %s's publish on %s with Nats-Rollup: %s was stored", a.role, a.subject, a.rollup)
		}
		if after := msgs(a.stream); after < before {
			t.Errorf("a %s's rollup (%s) on %s left %s with %d messages, %d before", a.role, a.rollup, a.subject, a.stream, after, before)
		}
	}
	// The body is whole: a worker reads it back.
	wb, err := body.Open(ctx, js[roles.Worker])
	if err != nil {
		t.Fatal(err)
	}
	rc, err := wb.Open(ctx, ref)
	if err != nil {
		t.Fatalf("the stored body after the rollups: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("the stored body after the rollups: %d bytes (%v), want %d", len(got), err, len(raw))
	}
}
