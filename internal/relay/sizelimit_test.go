package relay_test

import (
	"strconv"
	"strings"
	"testing"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
)

// A message queued past the producers' check (a plain nats pub) over its
// account's max_message_bytes is dead-lettered as invalid, its reason
// naming its size and the limit, and never sent; one under the limit, and
// a stored body under it, are sent.
func TestAccountSizeLimitAtRender(t *testing.T) {
	h := newHarness(t, setup{})
	const limit = 8 << 10
	h.enroll("small", "small@contoso.com", "contoso.onmicrosoft.com", func(a *account.Account) { a.MaxMessageBytes = limit })

	over := &message.Message{ID: "over-1", Account: "small", To: []string{"ops@fabrikam.com"}, Subject: "too big", Text: strings.Repeat("x", 2*limit)}
	counted, err := message.CountedSize(over)
	if err != nil || counted <= limit {
		t.Fatalf("counted %d (%v): the test message must be over %d", counted, err, limit)
	}
	h.publishMsg(over)
	store, err := body.Open(h.ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := store.Put(h.ctx, strings.NewReader("Subject: stored too big\r\n\r\n"+strings.Repeat("y\r\n", limit)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	h.publishMsg(&message.Message{ID: "over-2", Account: "small", To: []string{"ops@fabrikam.com"}, Body: &ref})
	h.publish("small", "under-1", "fits")

	h.waitFor("both oversized messages to be dead-lettered", func() bool { return len(h.deadLetters("small")) == 2 })
	h.waitFor("the small one to be sent", func() bool { return h.delivered()["fits"] == 1 })
	for _, dl := range h.deadLetters("small") {
		size := map[string]int64{"over-1": counted, "over-2": ref.Size}[dl.ID]
		want := []string{strconv.FormatInt(size, 10) + " bytes", "size limit of 8192 bytes", "account small"}
		if dl.Class != "invalid" {
			t.Errorf("%s: class %q, want invalid (permanent)", dl.ID, dl.Class)
		}
		for _, w := range want {
			if !strings.Contains(dl.Reason, w) {
				t.Errorf("%s: reason %q lacks %q", dl.ID, dl.Reason, w)
			}
		}
	}
	if n := h.delivered()["too big"] + h.delivered()["stored too big"]; n != 0 {
		t.Errorf("%d oversized messages sent", n)
	}
}
