package relay_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/termsafe"
)

// hostileID clears the operator's screen and retitles the window when
// printed raw.
const hostileID = "\x1b[2J\x1b]0;pwned\x07"

// A message id with control sequences is refused wherever it comes from
// (the JSON id, a bare `nats pub` header, mail for an account nobody
// registered) and dead-lettered as invalid; the dead letter carries the
// id escaped, so no control byte is stored where relay dlq, `nats stream
// get` or a log would print it.
func TestControlCharactersInIDsAreRefusedAndNotStored(t *testing.T) {
	h := newHarness(t, setup{engine: relay.Config{UnknownGrace: 200 * time.Millisecond}})
	h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)

	// The JSON id (and the Nats-Msg-Id relay publish would send with it).
	m := msgFor("alerts", hostileID+"json", hostileID+"subject")
	h.publishMsg(m)
	// A bare nats pub: no JSON id, the id only in the header.
	bare, _ := json.Marshal(map[string]any{"to": []string{"ops@fabrikam.com"}, "subject": hostileID, "text": "x"})
	for _, hdr := range []string{jetstream.MsgIDHeader, queue.HdrMessageID} {
		msg := &nats.Msg{Subject: queue.Subject("alerts"), Data: bare, Header: nats.Header{}}
		msg.Header.Set(hdr, hostileID+hdr)
		if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	// Mail for an account nobody registered is swept, not delivered.
	ghost := &nats.Msg{Subject: queue.Subject("ghost"), Data: bare, Header: nats.Header{}}
	ghost.Header.Set(jetstream.MsgIDHeader, hostileID+"ghost")
	if _, err := h.js.PublishMsg(h.ctx, ghost); err != nil {
		t.Fatal(err)
	}

	h.waitFor("four dead letters", func() bool { return len(h.deadLetters("")) == 4 && h.queued() == 0 })
	want := map[string]bool{
		termsafe.Line(hostileID + "json"): true, termsafe.Line(hostileID + jetstream.MsgIDHeader): true,
		termsafe.Line(hostileID + queue.HdrMessageID): true, termsafe.Line(hostileID + "ghost"): true,
	}
	for _, dl := range h.deadLetters("") {
		if !want[dl.ID] {
			t.Errorf("dead letter %d: id %q, want one of the escaped ids", dl.Seq, dl.ID)
		}
		delete(want, dl.ID)
		if dl.Class != "invalid" || !strings.Contains(dl.Reason, "id") {
			t.Errorf("dead letter %d (%q): class %s, reason %q", dl.Seq, dl.ID, dl.Class, dl.Reason)
		}
		for k, vs := range dl.Header {
			for _, v := range vs {
				if i := termsafe.Index(v); i >= 0 && (k == jetstream.MsgIDHeader || k == queue.HdrMessageID || strings.HasPrefix(k, "Relay-")) {
					t.Errorf("dead letter %d: header %s holds a control character: %q", dl.Seq, k, v)
				}
			}
		}
	}
	if got := h.delivered(); len(got) != 0 {
		t.Fatalf("delivered %v", got)
	}
}
