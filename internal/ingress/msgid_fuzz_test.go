package ingress

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzDropBadMessageID: whatever header section a client sends,
// dropBadMessageID removes only whole Message-ID fields (with their
// continuation lines), never touches the body, leaves a message with at
// most one Message-ID field and that one well-formed, and a second pass
// finds nothing more to remove.
func FuzzDropBadMessageID(f *testing.F) {
	for _, s := range []string{
		"Message-ID: <a@b>\r\nSubject: x\r\n\r\nbody\r\n",
		"Message-ID: am-3@example.org\r\nSubject: x\r\n\r\nMessage-ID: in the body\r\n",
		"message-id:\r\n (comment)\r\n <a@[1.2.3.4]>\r\n\r\n",
		"Message-ID: <\"q\\\"x\"@example.org> (c (nested))\r\n\r\n",
		"Message-ID: <a@b>\r\nMessage-ID: <c@d>\r\n\r\n",
		"Subject: no end of headers\r\nMessage-ID: <x",
		"\r\n\r\nMessage-ID: bad\r\n",
		"Message-ID: <a@b>\r\n\tcontinued\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, removed := dropBadMessageID(raw)
		if removed == nil {
			if !bytes.Equal(out, raw) {
				t.Fatalf("nothing removed, but the message changed:\n%q\n%q", raw, out)
			}
		} else if len(out) >= len(raw) {
			t.Fatalf("removed %q, but the message did not shrink", removed)
		}
		// The body (after the first empty line) is the client's, byte for byte.
		if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 && !bytes.HasPrefix(raw, []byte("\r\n")) {
			body := raw[i+4:]
			if !bytes.HasSuffix(out, body) {
				t.Fatalf("the body changed:\n%q\n%q", raw, out)
			}
		}
		// Every byte of out is in raw, in order, with whole lines dropped:
		// out is raw with some spans cut, so it is a subsequence.
		if !isSubsequence(out, raw) {
			t.Fatalf("output is not the input with fields cut:\n%q\n%q", raw, out)
		}
		again, more := dropBadMessageID(out)
		if more != nil || !bytes.Equal(again, out) {
			t.Fatalf("a second pass removed %q from %q", more, out)
		}
		for _, v := range removed {
			if strings.Contains(v, "\r\n") {
				t.Fatalf("a removed value %q keeps a line ending", v)
			}
		}
	})
}

func isSubsequence(sub, s []byte) bool {
	i := 0
	for j := 0; j < len(s) && i < len(sub); j++ {
		if sub[i] == s[j] {
			i++
		}
	}
	return i == len(sub)
}

// FuzzValidMsgID: validMsgID never panics and takes every msg-id built
// from the grammar's simple form, with CFWS around it.
func FuzzValidMsgID(f *testing.F) {
	f.Add("<a@b>", "a", "b")
	f.Add(" (c) <x.y@[1.2.3.4]> ", "x.y", "example.org")
	f.Add("<\"q\"@b>", "q", "b")
	f.Fuzz(func(t *testing.T, v, left, right string) {
		_ = validMsgID(v)
		if dotAtomText(left) && dotAtomText(right) {
			for _, id := range []string{"<" + left + "@" + right + ">", " (note) <" + left + "@" + right + ">\t"} {
				if !validMsgID(id) {
					t.Fatalf("validMsgID(%q) = false for a dot-atom msg-id", id)
				}
			}
		}
	})
}
