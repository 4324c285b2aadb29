package relay_test

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"

	"relay365/internal/fakeo365"
	"relay365/internal/message"
)

// TestRenderedMessagesArriveWhole: messages that once lost something on
// the way (internal/message's round trip has each case) go through the
// whole relay, JetStream, the worker and SMTP, to a server that keeps
// SMTP's limits, and arrive whole when read with the standard library's
// parsers: two long words in a subject keep the space between them
// (RFC 2047 §6.2), no header line is white space alone (RFC 5322
// §3.2.2), a long attachment name with ':' '=' '@' reads back (RFC 2231
// §7), text with a bare CR keeps its line breaks, a raw message's
// Resent-Bcc is gone (RFC 5322 §3.6.6) and its windows-1252 display name
// does not make it invalid.
func TestRenderedMessagesArriveWhole(t *testing.T) {
	h := newHarness(t, setup{fake: fakeo365.Config{Strict: true}})
	h.enroll("whole", "whole@contoso.com", "contoso.onmicrosoft.com", nil)
	subject := strings.Repeat("A", 100) + " " + strings.Repeat("B", 100) + strings.Repeat(" ", 120)
	filename := "grafana-export-2026-12-07T18:00:00Z-node=web-3@prod+dashboard$1&2.csv"
	h.publishMsg(&message.Message{ID: "json", Account: "whole", To: []string{"ops@fabrikam.com"}, Subject: subject,
		Text:        "Status:\ré\nnext",
		Attachments: []message.Attachment{{Filename: filename, ContentType: "text/csv", Data: []byte("a,b\r\n")}}})
	raw := "From: =?windows-1252?Q?Caf=E9?= <cafe@example.org>\r\nTo: ops@fabrikam.com\r\n" +
		"Resent-Bcc: secret@fabrikam.com\r\nSubject: raw\r\n\r\nbody\r\n"
	h.publishMsg(&message.Message{ID: "raw", Account: "whole", Raw: []byte(raw)})
	h.waitFor("both delivered or dead-lettered", func() bool {
		return h.queued() == 0 && len(h.delivered())+len(h.deadLetters("whole")) == 2
	})
	if dl := h.deadLetters("whole"); len(dl) != 0 {
		t.Fatalf("%d dead letters: %+v", len(dl), dl)
	}
	for _, m := range h.fake.Messages() {
		head, _, _ := bytes.Cut(m.Data, []byte("\r\n\r\n"))
		for _, l := range strings.Split(string(head), "\r\n") {
			if strings.Trim(l, " \t") == "" {
				t.Fatalf("a header line of white space alone:\n%s", head)
			}
		}
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		switch m.Subject {
		case "raw":
			if bytes.Contains(m.Data, []byte("secret@")) || len(m.To) != 1 {
				t.Fatalf("raw message: envelope %q, data:\n%s", m.To, m.Data)
			}
			from, err := new(mail.AddressParser).Parse(msg.Header.Get("From"))
			if err != nil || from.Name != "Café" || from.Address != "whole@contoso.com" {
				t.Fatalf("raw message's From %q reads back as %v (%v)", msg.Header.Get("From"), from, err)
			}
		case subject:
			_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
			if err != nil {
				t.Fatal(err)
			}
			mr := multipart.NewReader(msg.Body, params["boundary"])
			text, err := mr.NextPart()
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := io.ReadAll(text); string(b) != "Status:\r\né\r\nnext" {
				t.Fatalf("text reads back as %q", b)
			}
			att, err := mr.NextPart()
			if err != nil {
				t.Fatal(err)
			}
			if att.FileName() != filename {
				t.Fatalf("attachment name reads back as %q from %q", att.FileName(), att.Header.Get("Content-Disposition"))
			}
		default:
			if !strings.HasPrefix(m.Subject, "Relay365: ") {
				t.Fatalf("a message with subject %q: the long subject lost its space", m.Subject)
			}
		}
	}
}
