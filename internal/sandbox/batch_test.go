package sandbox_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/sandbox"
	"relay365/producer"
)

// TestPublishBatchDeliveredOnceEach: a producer hands over 130 messages
// in one PublishBatch (two atomic batches), one of them large (its body
// in the body store) and one with an id published before. Each is
// delivered once, the large one intact, and the old id is reported as a
// duplicate and not sent again. A batch with an invalid message queues
// nothing and names the message.
func TestPublishBatchDeliveredOnceEach(t *testing.T) {
	s, _ := start(t, t.TempDir())
	ctx := testCtx(t)
	_, js, p := connect(t, s)
	msg := func(id string) *producer.Message {
		return &producer.Message{ID: id, Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "batch " + id, Text: "x"}
	}
	if _, err := p.Publish(ctx, msg("b-7")); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), message.InlineMax/8) // twice the inline limit
	var ms []*producer.Message
	for i := range 130 {
		m := msg(fmt.Sprintf("b-%d", i))
		if i == 40 {
			m.Attachments = []producer.Attachment{{Filename: "big.bin", Data: big}}
		}
		ms = append(ms, m)
	}
	res, err := p.PublishBatch(ctx, ms)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(ms) {
		t.Fatalf("%d results for %d messages", len(res), len(ms))
	}
	for i, r := range res {
		if r.ID != ms[i].ID || r.Duplicate != (i == 7) {
			t.Fatalf("result %d: %+v (duplicate should be %v)", i, r, i == 7)
		}
	}
	if _, err := s.Fake.WaitMessages(ctx, len(ms)); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	seen := map[string]int{}
	for _, m := range s.Fake.Messages() {
		seen[m.Subject]++
		if m.Subject == "batch b-40" && !bytes.Contains(m.Data, []byte("big.bin")) {
			t.Fatal("the large message arrived without its attachment")
		}
	}
	for _, m := range ms {
		if seen[m.Subject] != 1 {
			t.Fatalf("%q delivered %d times, want once", m.Subject, seen[m.Subject])
		}
	}

	before := len(s.Fake.Messages())
	bad := []*producer.Message{msg("c-0"), {ID: "c-1", Account: sandbox.Account, Subject: "no recipient", Text: "x"}, msg("c-2")}
	if _, err := p.PublishBatch(ctx, bad); err == nil || !strings.Contains(err.Error(), "message 1") {
		t.Fatalf("a batch with an invalid message: %v, want an error naming message 1", err)
	}
	mail, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := mail.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 || len(s.Fake.Messages()) != before {
		t.Fatalf("a refused batch queued or sent something: MAIL %d, sent %d (was %d)", info.State.Msgs, len(s.Fake.Messages()), before)
	}

	var tl *producer.TooLarge
	huge := msg("d-1")
	huge.Attachments = []producer.Attachment{{Filename: "huge.bin", Data: make([]byte, 36<<20)}}
	if _, err := p.PublishBatch(ctx, []*producer.Message{msg("d-0"), huge}); !errors.As(err, &tl) {
		t.Fatalf("a batch with a 36 MB message: %v, want a *TooLarge", err)
	}
}
