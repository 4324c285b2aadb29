package relay_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"relay365/internal/body"
	"relay365/internal/body/bodytest"
	"relay365/internal/message"
	"relay365/internal/relay"
)

// What a crash leaves in the body store, and how the relay cleans it:
// a producer killed between storing a body and publishing its message
// leaves an orphan, swept once older than BodyOrphanAge; a body a queued
// or dead-lettered message names is never swept, however old; a sent
// message's body is deleted after its ack.
func TestBodiesSentDeletedOrphansSweptNamedKept(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{BodySweepEvery: 50 * time.Millisecond, BodyOrphanAge: 500 * time.Millisecond}})
	store, err := body.Open(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	put := func(subject string) message.BodyRef {
		raw := "Subject: " + subject + "\r\nTo: ops@contoso.com\r\n\r\n" + strings.Repeat("line of a large body\r\n", 20000)
		ref, err := store.Put(h.ctx, strings.NewReader(raw), message.MaxSize)
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	exists := func(ref message.BodyRef) bool {
		rc, err := store.Open(h.ctx, ref)
		if err != nil {
			return false
		}
		rc.Close()
		return true
	}
	orphan := put("never published")
	// Mail for an account nobody connected: dead-lettered by the
	// sweeper of unknown accounts, its body kept with the dead letter.
	dead := put("for nobody")
	h.publishMsg(&message.Message{ID: "dead-1", Account: "nobody", To: []string{"ops@contoso.com"}, Body: &dead})

	h.waitFor("the orphan to be swept", func() bool { return !exists(orphan) })
	if !exists(dead) {
		t.Fatal("the body of a queued message was swept")
	}
	h.waitFor("the mail for nobody to be dead-lettered", func() bool { return len(h.deadLetters("nobody")) == 1 })
	if !exists(dead) {
		t.Fatal("the body of a dead letter was swept")
	}

	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	sent := put("large alert")
	h.publishMsg(&message.Message{ID: "big-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &sent})
	h.waitFor("the large message to be sent", func() bool { return h.delivered()["large alert"] == 1 })
	h.waitFor("its body to be deleted after the ack", func() bool { return !exists(sent) })
	var got []byte
	for _, m := range h.fake.Messages() {
		if m.Subject == "large alert" {
			got = m.Data
		}
	}
	if !bytes.HasSuffix(got, []byte(strings.Repeat("line of a large body\r\n", 20000))) || !bytes.Contains(got, []byte("Message-ID: ")) {
		t.Errorf("delivered %d bytes, not the stored body with the relay's headers", len(got))
	}
	if !exists(dead) {
		t.Fatal("the body of a dead letter was swept")
	}
}

// A body replaced after its message was queued is never sent: the
// message is dead-lettered as invalid, naming the object.
func TestReplacedBodyDeadLettered(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	store, err := body.Open(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := store.Put(h.ctx, strings.NewReader("Subject: real\r\n\r\nthe real body\r\n"), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := bodytest.Replace(h.ctx, h.js, ref.Object, []byte("Subject: forged\r\n\r\nsomething else\r\n")); err != nil {
		t.Fatal(err)
	}
	h.publishMsg(&message.Message{ID: "m-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref})
	h.waitFor("the message to be dead-lettered", func() bool { return len(h.deadLetters("alerts")) == 1 })
	dl := h.deadLetters("alerts")[0]
	if dl.Class != "invalid" || !strings.Contains(dl.Reason, ref.Object) {
		t.Errorf("dead letter class %q reason %q", dl.Class, dl.Reason)
	}
	if n := h.delivered()["forged"] + h.delivered()["real"]; n != 0 {
		t.Errorf("%d sent", n)
	}
}

// A body missing one of its chunks (record, size and digest untouched)
// is dead-lettered as invalid; it once held its message and a session
// for ever, the reader waiting for the chunk and the heartbeat keeping
// the message from redelivery.
func TestBodyMissingAChunkDeadLettered(t *testing.T) {
	h := newHarness(t, setup{})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
	store, err := body.Open(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	raw := "Subject: big\r\n\r\n" + strings.Repeat("a line of the body that fills it up\r\n", 3*body.ChunkSize/37)
	ref, err := store.Put(h.ctx, strings.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := h.js.ObjectStore(h.ctx, body.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(h.ctx, ref.Object)
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.js.Stream(h.ctx, body.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(h.ctx, "$O."+body.Bucket+".C."+info.NUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(h.ctx, last.Sequence); err != nil {
		t.Fatal(err)
	}
	h.publishMsg(&message.Message{ID: "m-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref})
	h.waitFor("the message to be dead-lettered", func() bool { return len(h.deadLetters("alerts")) == 1 })
	if dl := h.deadLetters("alerts")[0]; dl.Class != "invalid" || !strings.Contains(dl.Reason, "chunks") {
		t.Errorf("dead letter class %q reason %q", dl.Class, dl.Reason)
	}
	if n := h.delivered()["big"]; n != 0 {
		t.Errorf("%d sent", n)
	}
}
