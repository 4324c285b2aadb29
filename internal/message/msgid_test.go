package message

import (
	"strings"
	"testing"
	"time"
)

// TestMalformedMessageIDReplaced: renderRaw keeps one well-formed
// Message-ID as it came and replaces a malformed one, or more than one,
// with the relay's stable one (RFC 6409 §8.3), for every raw message: the
// front door's, relay sendmail's and a producer's all render here.
func TestMalformedMessageIDReplaced(t *testing.T) {
	head := "From: <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nSubject: id\r\nDate: Sat, 05 Dec 2026 09:30:00 +0000\r\n"
	m := &Message{ID: "m-1", Account: "alerts", To: []string{"ops@contoso.com"}}
	ours := "Message-ID: " + MessageID("alerts", "m-1", "alerts@contoso.com") + "\r\n"
	for _, tc := range []struct {
		field string
		kept  bool
	}{
		{"Message-ID: <am-1@example.org>\r\n", true},
		{"Message-Id:\r\n <am-2.x@[10.0.0.1]> (a comment)\r\n", true},
		{"Message-ID: <\"quoted left\"@example.org>\r\n", true},
		{"", false},
		{"Message-ID: am-3@example.org\r\n", false},
		{"Message-ID: <no-at-sign>\r\n", false},
		{"Message-ID:\r\n", false},
		{"Message-ID: <a@b> <c@d>\r\n", false},
		{"Message-ID: <a b@example.org>\r\n", false},
		{"Message-ID: <a@example.org>\r\nMessage-ID: <b@example.org>\r\n", false},
	} {
		m.Raw = []byte(head + tc.field + "\r\nbody\r\n")
		out, err := renderRaw(m, Sender{Mailbox: "alerts@contoso.com"}, time.Unix(0, 0))
		if err != nil {
			t.Fatalf("%q: %v", tc.field, err)
		}
		got := string(out)
		if n := strings.Count(strings.ToLower(got), "\r\nmessage-id:"); n != 1 {
			t.Errorf("%q: %d Message-ID fields, want 1:\n%s", tc.field, n, got)
		}
		switch {
		case tc.kept && !strings.Contains(got, tc.field):
			t.Errorf("well-formed %q not kept as sent:\n%s", tc.field, got)
		case !tc.kept && !strings.Contains(got, ours):
			t.Errorf("%q not replaced by %q:\n%s", tc.field, ours, got)
		}
	}
}

// FuzzValidMsgID: ValidMsgID never panics and takes every msg-id built
// from the grammar's simple form, with CFWS around it.
func FuzzValidMsgID(f *testing.F) {
	f.Add("<a@b>", "a", "b")
	f.Add(" (c) <x.y@[1.2.3.4]> ", "x.y", "example.org")
	f.Add("<\"q\"@b>", "q", "b")
	f.Fuzz(func(t *testing.T, v, left, right string) {
		_ = ValidMsgID(v)
		if dotAtomText(left) && dotAtomText(right) {
			for _, id := range []string{"<" + left + "@" + right + ">", " (note) <" + left + "@" + right + ">\t"} {
				if !ValidMsgID(id) {
					t.Fatalf("ValidMsgID(%q) = false for a dot-atom msg-id", id)
				}
			}
		}
	})
}
