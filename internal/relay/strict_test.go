package relay_test

import (
	"strings"
	"testing"

	"relay365/internal/fakeo365"
	"relay365/internal/message"
)

// TestStrictServer: against a server that keeps SMTP's limits (512-octet
// command lines, 998-octet text lines, no bare CR or LF) everything still
// goes: the consent's test mail and the sessions authenticate with the
// Office 365 sized token after an empty 334 (RFC 4954 §4), a 2,000
// character subject of Alertmanager's kind and a long producer header are
// folded, and a raw message written with LF line endings and a long
// Subject line is brought to CRLF and folded.
func TestStrictServer(t *testing.T) {
	h := newHarness(t, setup{fake: fakeo365.Config{Strict: true}})
	h.enroll("strict", "strict@contoso.com", "contoso.onmicrosoft.com", nil)
	var subject strings.Builder
	subject.WriteString("[FIRING:30] DiskFull")
	for i := range 30 {
		subject.WriteString(" (instance=db-" + strings.Repeat("7", i%5) + ".prod.contoso.com:9100 mountpoint=/var/lib/postgresql severity=page)")
	}
	if subject.Len() < 2000 {
		t.Fatalf("subject of %d characters", subject.Len())
	}
	h.publishMsg(&message.Message{ID: "long-subject", Account: "strict", To: []string{"ops@fabrikam.com"}, Subject: subject.String(),
		Text: "disk full", Headers: map[string]string{"X-Labels": strings.Repeat("label=value,", 150)}})
	raw := "From: Alertmanager <am@example.org>\nTo: ops@fabrikam.com\nSubject: raw " + strings.Repeat("word ", 300) + "\n\nbody\n"
	h.publishMsg(&message.Message{ID: "raw-long", Account: "strict", Raw: []byte(raw)})
	h.waitFor("both delivered", func() bool { return h.queued() == 0 && len(h.fake.Messages()) == 3 })
	if n := len(h.deadLetters("strict")); n != 0 {
		t.Fatalf("%d dead letters: %+v", n, h.deadLetters("strict"))
	}
	got := map[string]bool{}
	for _, m := range h.fake.Messages()[1:] {
		got[m.Subject] = true
	}
	if !got[subject.String()] || !got[strings.TrimSpace("raw "+strings.Repeat("word ", 300))] {
		t.Fatalf("delivered subjects %v: the folded subjects do not read back", got)
	}
}
