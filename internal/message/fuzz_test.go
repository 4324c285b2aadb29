package message

import (
	"bytes"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"
)

// envelopeSafe reports whether addr can stand in MAIL FROM or RCPT TO
// (RFC 5321 §4.1.2) without breaking the command line.
func envelopeSafe(addr string) bool {
	return addr != "" && strings.Contains(addr, "@") && !strings.ContainsAny(addr, " <>\"\\\r\n\x00")
}

// FuzzParseAddress: an address ParseAddress accepts is safe in the SMTP
// envelope and, rendered into To, reads back as the same address.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"ops@contoso.com", "Ops Team <ops@contoso.com>", `"Ops, Team" <ops@contoso.com>`,
		"=?utf-8?q?J=C3=B6rg?= <j@contoso.com>", "a@b\r\nBcc: x@y.com", `"a b"@contoso.com`,
		"<@route:a@b.com>", "a@[127.0.0.1]", "Jörg <jörg@münchen.de>", "", "@", "a@",
		`"\\°" <0@0>`, // Q-encoded, the backslash broke the phrase (RFC 2047 §5(3))
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress("to", s)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error is not an *Invalid: %v", err)
			}
			return
		}
		if !envelopeSafe(a.Address) {
			t.Fatalf("ParseAddress(%q) accepted %q, unsafe in the envelope", s, a.Address)
		}
		m := &Message{ID: "x", Account: "a", To: []string{s}, Subject: "s", Text: "t"}
		if err := m.Validate(); err != nil {
			if routable("to", a.Address) != nil {
				return // an address, but no recipient Office 365 can deliver to
			}
			t.Fatalf("address accepted alone but message invalid: %v", err)
		}
		r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, time.Unix(0, 0))
		if err != nil {
			return
		}
		if !slices.Equal(r.Rcpts, []string{a.Address}) {
			t.Fatalf("envelope %q, want [%q]", r.Rcpts, a.Address)
		}
		msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
		if err != nil {
			t.Fatalf("rendered message does not parse: %v\n%q", err, r.Data)
		}
		to, err := msg.Header.AddressList("To")
		if err != nil || len(to) != 1 || !strings.EqualFold(to[0].Address, a.Address) {
			t.Fatalf("To header %q reads back as %v (%v), want %q", msg.Header.Get("To"), to, err, a.Address)
		}
	})
}

// FuzzHeaders: a custom header that validates renders as exactly one
// header field of that name; no value adds a field or a recipient.
func FuzzHeaders(f *testing.F) {
	f.Add("X-Alert-Id", "7f3a")
	f.Add("X-Tag", "a\r\nBcc: x@y.com")
	f.Add("X-Tag", "line\nX-Other: y")
	f.Add("Bcc", "x@y.com")
	f.Add("X-Bad Name", "v")
	f.Add("X-Empty", "")
	f.Add("X-Utf8", "Grüße, 東京")
	f.Add("X-Encoded", "=?utf-8?q?a=0D=0ABcc:_x@y.com?=")
	sender := Sender{Mailbox: "alerts@contoso.com"}
	base := func(h map[string]string) *Message {
		return &Message{ID: "x", Account: "a", To: []string{"ops@contoso.com"}, Subject: "s", Text: "t", Headers: h}
	}
	plain, err := Render(base(nil), sender, time.Unix(0, 0))
	if err != nil {
		f.Fatal(err)
	}
	plainMsg, err := mail.ReadMessage(bytes.NewReader(plain.Data))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		m := base(map[string]string{name: value})
		if err := m.Validate(); err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error is not an *Invalid: %v", err)
			}
			return
		}
		r, err := Render(m, sender, time.Unix(0, 0))
		if err != nil {
			return
		}
		msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
		if err != nil {
			t.Fatalf("rendered message does not parse: %v\n%q", err, r.Data)
		}
		want := map[string]int{}
		for k, v := range plainMsg.Header {
			want[k] = len(v)
		}
		want[canonical(name)]++
		for k, v := range msg.Header {
			if want[k] != len(v) {
				t.Fatalf("header %s appears %d times, want %d:\n%q", k, len(v), want[k], r.Data)
			}
		}
		if len(msg.Header) != len(want) {
			t.Fatalf("%d header names, want %d:\n%q", len(msg.Header), len(want), r.Data)
		}
		if !slices.Equal(r.Rcpts, plain.Rcpts) {
			t.Fatalf("envelope changed to %q", r.Rcpts)
		}
	})
}

// FuzzRawRecipients: the envelope recipients read from a raw message's
// To and Cc headers are safe in RCPT TO.
func FuzzRawRecipients(f *testing.F) {
	for _, s := range []string{
		"To: ops@contoso.com\r\n\r\nx",
		"To: A <a@b.com>, \"c d\" <c@d.com>\r\nCc: e@f.com\r\n\r\nbody",
		"To: \"a b\"@contoso.com\r\n\r\nx",
		"To: \"a>b\"@contoso.com\r\n\r\nx",
		"To: a@b.com\r\n\tBcc: x@y.com\r\n\r\nx",
		"Subject: none\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := &Message{ID: "x", Account: "a", Raw: raw}
		if err := m.Validate(); err != nil {
			return
		}
		rcpts, err := m.Recipients()
		if err != nil || len(rcpts) == 0 {
			t.Fatalf("valid raw message, recipients %q, %v", rcpts, err)
		}
		for _, r := range rcpts {
			if !envelopeSafe(r) {
				t.Fatalf("raw message gave recipient %q, unsafe in RCPT TO", r)
			}
		}
	})
}
