package ingress_test

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"

	"relay365/internal/account"
	"relay365/internal/message"
)

// TestMalformedMessageIDIsReplaced: a submitted message whose Message-ID
// field is not one msg-id (RFC 5322 §3.6.4) leaves with the relay's
// stable one instead, as RFC 6409 §8.3 says a submission server SHOULD
// do, and a well-formed one is kept as the client wrote it; the old
// value is logged. The relay's own message id (the Nats-Msg-Id) is the
// transaction's, as for every submission. Both ways DATA goes: a message
// held whole, and one streamed into the body store (the worker's
// rendering, message.renderRaw, replaces it for both).
func TestMalformedMessageIDIsReplaced(t *testing.T) {
	f := startFrontDoor(t, nil)
	alerts := account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com"}
	head := "From: <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nSubject: id\r\nDate: Sat, 05 Dec 2026 09:30:00 +0000\r\n"
	for _, tc := range []struct {
		field string // the Message-ID field(s) as sent
		kept  bool
	}{
		// The grammar's cases are message.TestMalformedMessageIDReplaced's.
		{"Message-Id:\r\n <am-2.x@[10.0.0.1]> (a comment)\r\n", true},
		{"Message-ID: am-3@example.org\r\n", false},
		{"Message-ID: <a@example.org>\r\nMessage-ID: <b@example.org>\r\n", false},
	} {
		before := len(f.queued())
		c := f.login("alertmanager", alertsPassword)
		if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, head+tc.field+"\r\nbody\r\n"); err != nil {
			t.Fatalf("%q: %v", tc.field, err)
		}
		q := f.queued()
		if len(q) != before+1 {
			t.Fatalf("%q: %d queued, want %d", tc.field, len(q), before+1)
		}
		m, _, _ := f.sent(q[len(q)-1], alerts)
		r, err := message.Render(m, message.Sender{Mailbox: alerts.Mailbox}, f.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		rendered := string(r.Data)
		ours := "Message-ID: " + message.MessageID("alerts", m.ID, alerts.Mailbox) + "\r\n"
		switch {
		case tc.kept && (!strings.Contains(string(m.Raw), tc.field) || strings.Contains(rendered, ours)):
			t.Errorf("well-formed %q not kept as sent:\n%s", tc.field, rendered)
		case !tc.kept && (strings.Count(strings.ToLower(rendered), "\r\nmessage-id:") != 1 || !strings.Contains(rendered, ours)):
			t.Errorf("malformed %q not replaced by %q:\n%s", tc.field, ours, rendered)
		}
	}
	if !strings.Contains(f.logs.String(), `"replaced_message_id":["am-3@example.org"]`) {
		t.Errorf("the replaced Message-ID is not logged:\n%s", f.logs.String())
	}

	// Streamed: the body store keeps the message as sent; the header
	// section rendered for it leaves without the malformed field.
	att := make([]byte, 3<<20)
	rand.Read(att)
	big := bigMail("alerts@contoso.com", "streamed", att)
	big = strings.Replace(big, "Subject: streamed\r\n", "Subject: streamed\r\nMessage-ID: broken id\r\n", 1)
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, big); err != nil {
		t.Fatal(err)
	}
	q := f.queued()
	m, stored, _ := f.sent(q[len(q)-1], alerts)
	if m.Body == nil {
		t.Fatal("the large message was not streamed into the body store")
	}
	if !strings.HasSuffix(string(stored), big) {
		t.Fatalf("stored content is not the message as sent (%d bytes, want a suffix of %d)", len(stored), len(big))
	}
	section, err := message.ReadHeaderSection(bytes.NewReader(stored))
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.RenderBody(m, message.Sender{Mailbox: alerts.Mailbox}, f.clock.Now(), section)
	if err != nil {
		t.Fatal(err)
	}
	ours := "Message-ID: " + message.MessageID("alerts", m.ID, alerts.Mailbox) + "\r\n"
	if h := string(r.Data); strings.Contains(h, "broken id") || !strings.Contains(h, ours) {
		t.Fatalf("the rendered header section keeps the malformed Message-ID or lacks %q:\n%s", ours, h)
	}
}
