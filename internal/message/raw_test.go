package message

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
	"time"
)

var rawNow = time.Date(2026, 12, 5, 9, 30, 0, 0, time.UTC)

func renderRawString(t *testing.T, raw string, s Sender) (string, error) {
	t.Helper()
	m := &Message{ID: "raw-1", Account: "alerts", Raw: []byte(raw)}
	if err := m.Validate(); err != nil {
		return "", err
	}
	r, err := Render(m, s, rawNow)
	if err != nil {
		return "", err
	}
	return string(r.Data), nil
}

func TestRenderRaw(t *testing.T) {
	mailbox := Sender{Mailbox: "alerts@contoso.com"}
	allow := Sender{Mailbox: "alerts@contoso.com", Policy: PolicyAllow, SendAs: []string{"noreply@contoso.com"}}
	reject := Sender{Mailbox: "alerts@contoso.com", Policy: PolicyReject}
	for _, tc := range []struct {
		name   string
		raw    string
		sender Sender
		want   string // the whole rendered message; "" when an error is wanted
		err    string
	}{
		{
			name:   "LF line endings, rewrite, Bcc dropped, Date and Message-ID added",
			raw:    "From: Alertmanager <am@example.org>\nTo: ops@contoso.com\nBcc: boss@contoso.com\nSubject: [FIRING:1] HighLoad\n\nload 17\n",
			sender: mailbox,
			want: "From: \"Alertmanager\" <alerts@contoso.com>\r\n" +
				"Reply-To: \"Alertmanager\" <am@example.org>\r\n" +
				"To: ops@contoso.com\r\nSubject: [FIRING:1] HighLoad\r\n" +
				"Date: Sat, 05 Dec 2026 09:30:00 +0000\r\n" +
				"Message-ID: " + MessageID("alerts", "raw-1", "alerts@contoso.com") + "\r\n\r\nload 17\r\n",
		},
		{
			name:   "bare CR, a kept Reply-To, folded lines kept, Sender dropped under rewrite",
			raw:    "From: am@example.org\r\nSender: other@example.org\rTo: ops@contoso.com\nReply-To: team@example.org\r\nSubject: a\r\n long subject\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nbody",
			sender: mailbox,
			want: "From: <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nReply-To: team@example.org\r\nSubject: a\r\n long subject\r\n" +
				"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nbody",
		},
		{
			name:   "no From at all: the mailbox",
			raw:    "To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: mailbox,
			want:   "To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nFrom: <alerts@contoso.com>\r\n\r\nhi\r\n",
		},
		{
			name:   "allow: a send-as From and Sender stay",
			raw:    "From: No Reply <noreply@contoso.com>\r\nSender: alerts@contoso.com\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: allow,
			want:   "From: No Reply <noreply@contoso.com>\r\nSender: alerts@contoso.com\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{name: "allow: a From outside the list", raw: "From: x@example.org\r\nTo: ops@contoso.com\r\n\r\nhi", sender: allow, err: "send-as"},
		{name: "allow: a Sender outside the list", raw: "From: noreply@contoso.com\r\nSender: x@example.org\r\nTo: ops@contoso.com\r\n\r\nhi", sender: allow, err: "sender: x@example.org"},
		{name: "reject: another From", raw: "From: x@example.org\r\nTo: ops@contoso.com\r\n\r\nhi", sender: reject, err: "from policy reject"},
		{
			// The placeholder (MailboxPlaceholder) stands for the mailbox
			// alone: a hostile producer pairing it with a Sender of
			// someone else gets no send-on-behalf past reject (or allow):
			// the From is the mailbox, the Sender is dropped, no Reply-To.
			name:   "reject: the mailbox placeholder as From does not carry another Sender",
			raw:    "From: Boss <MAILBOX@relay365.invalid>\r\nSender: ceo@contoso.com\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: reject,
			want:   "From: \"Boss\" <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{
			name:   "allow: the mailbox placeholder as From does not carry a send-as Sender",
			raw:    "From: Boss <mailbox@relay365.invalid>\r\nSender: noreply@contoso.com\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: allow,
			want:   "From: \"Boss\" <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{name: "allow: the mailbox placeholder is no Sender", raw: "From: noreply@contoso.com\r\nSender: mailbox@relay365.invalid\r\nTo: ops@contoso.com\r\n\r\nhi", sender: allow, err: "sender: mailbox@relay365.invalid"},
		{
			name:   "rewrite: a foreign Resent-From names the mailbox, a foreign Resent-Sender is dropped",
			raw:    "Resent-From: ceo@example.org\r\nResent-Sender: x@example.org\r\nResent-Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: mailbox,
			want:   "Resent-From: <alerts@contoso.com>\r\nResent-Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{
			name:   "allow: a send-as Resent-From stays",
			raw:    "Resent-From: noreply@contoso.com\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
			sender: allow,
			want:   "Resent-From: noreply@contoso.com\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{name: "allow: a Resent-From outside the list", raw: "Resent-From: ceo@example.org\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\n\r\nhi", sender: allow, err: "Resent-From field"},
		{name: "reject: a foreign Resent-Sender", raw: "Resent-Sender: ceo@example.org\r\nFrom: alerts@contoso.com\r\nResent-To: ops@contoso.com\r\n\r\nhi", sender: reject, err: "Resent-Sender field"},
		{
			name:   "an mbox From line before the header is removed, as relay sendmail does",
			raw:    "From am@example.org Mon Dec  7 10:00:00 2026\n>From x Mon Dec  7 10:00:00 2026\nFrom: alerts@contoso.com\nTo: ops@contoso.com\nDate: Fri, 04 Dec 2026 10:00:00 +0000\nMessage-ID: <x@y>\n\nhi\n",
			sender: mailbox,
			want:   "From: alerts@contoso.com\r\nTo: ops@contoso.com\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
		},
		{
			// RFC 5322 §4.5 obsolete syntax: a From field, held to the
			// policy (reject: not the mailbox), not an mbox line dropped.
			name:   "From with white space before its colon is a From field",
			raw:    "From : ceo@example.org\r\nTo: ops@contoso.com\r\n\r\nhi",
			sender: reject,
			err:    "from",
		},
		{name: "NUL", raw: "To: ops@contoso.com\r\n\r\nh\x00i", sender: mailbox, err: "NUL"},
		{name: "two From fields", raw: "From: a@b.com\r\nFrom: c@d.com\r\nTo: ops@contoso.com\r\n\r\nhi", sender: mailbox, err: "more than one From"},
		{name: "not a header", raw: "To: ops@contoso.com\r\nthis is not a field\r\n\r\nhi", sender: mailbox, err: "header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := renderRawString(t, tc.raw, tc.sender)
			if tc.err != "" {
				if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("want an invalid-message error about %q, got %v", tc.err, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("rendered:\n%q\nwant:\n%q", got, tc.want)
			}
		})
	}
}

func TestRawBccRecipientsAreEnvelopeOnly(t *testing.T) {
	m := &Message{ID: "b", Account: "alerts", Raw: []byte("To: a@contoso.com\nCc: b@contoso.com\nBcc: c@contoso.com\n\nx\n")}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, rawNow)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(r.Rcpts, ",") != "a@contoso.com,b@contoso.com,c@contoso.com" {
		t.Fatalf("envelope %v", r.Rcpts)
	}
	if bytes.Contains(bytes.ToLower(r.Data), []byte("bcc")) || bytes.Contains(r.Data, []byte("c@contoso.com")) {
		t.Fatalf("the Bcc recipient shows in the message:\n%s", r.Data)
	}
}

func TestNormalizeRaw(t *testing.T) {
	for in, want := range map[string]string{
		"a\r\nb\r\n": "a\r\nb\r\n",
		"a\nb\n":     "a\r\nb\r\n",
		"a\rb\r":     "a\r\nb\r\n",
		"a\r\r\nb":   "a\r\n\r\nb",
		"\n\r":       "\r\n\r\n",
	} {
		got, err := NormalizeRaw([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("NormalizeRaw(%q) = %q %v, want %q", in, got, err, want)
		}
	}
}

// FuzzRenderRaw: whatever a producer hands over as raw, the relay either
// refuses it as invalid or sends a message with CRLF line endings only, no
// Bcc field, and one From that is the mailbox (policy rewrite), which
// net/mail reads back.
func FuzzRenderRaw(f *testing.F) {
	for _, s := range []string{
		"From: a@b.com\nTo: c@d.com\n\nx",
		"From: \"N\" <a@b.com>\r\nBcc: e@f.com\r\nSubject: s\r\n s2\r\n\r\nbody\r\n",
		"To: c@d.com\r\n\r\n",
		"Sender: z@y.com\rFrom: a@b.com\r\n\r\n.",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := &Message{ID: "f", Account: "a", Raw: raw, To: []string{"c@d.com"}}
		if err := m.Validate(); err != nil {
			return
		}
		r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, rawNow)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("not an invalid-message error: %v", err)
			}
			return
		}
		if needsCRLF(r.Data) {
			t.Fatalf("bare CR or LF in %q", r.Data)
		}
		if n, _ := longestLine(r.Data); n > 998 {
			t.Fatalf("a line of %d octets in the rendered message", n)
		}
		msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
		if err != nil {
			t.Fatalf("rendered message does not parse: %v\n%q", err, r.Data)
		}
		if _, ok := msg.Header["Bcc"]; ok {
			t.Fatalf("Bcc field left in %q", r.Data)
		}
		if len(msg.Header["From"]) != 1 {
			t.Fatalf("%d From fields in %q", len(msg.Header["From"]), r.Data)
		}
		from, err := mail.ParseAddress(msg.Header.Get("From"))
		if err != nil || !strings.EqualFold(from.Address, "alerts@contoso.com") {
			t.Fatalf("From %q (%v), want the mailbox", msg.Header.Get("From"), err)
		}
	})
}

// TestRawBlindFieldsRemoved: no blind recipient field reaches what is
// sent, whatever its case or folding: Bcc (RFC 5322 §3.6.3) and
// Resent-Bcc, which §3.6.6 says is handled as Bcc is, names recipients
// the others must not see. The envelope names the recipients.
func TestRawBlindFieldsRemoved(t *testing.T) {
	for _, tc := range []struct{ name, field string }{
		{"Bcc", "Bcc: secret@contoso.com\r\n"},
		{"lower case, folded", "bcc: a@contoso.com,\r\n secret@contoso.com\r\n"},
		{"Resent-Bcc", "Resent-Bcc: secret@contoso.com\r\n"},
		{"RESENT-BCC, folded", "RESENT-BCC:\r\n\tsecret@contoso.com\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := "From: alerts@contoso.com\r\nTo: ops@contoso.com\r\n" +
				"Resent-From: alerts@contoso.com\r\nResent-Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n" +
				tc.field + "Subject: s\r\n\r\nbody\r\n"
			m := &Message{ID: "rb", Account: "alerts", Raw: []byte(raw), To: []string{"ops@contoso.com"}, Bcc: []string{"secret@contoso.com"}}
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, rawNow)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(bytes.ToLower(r.Data), []byte("bcc")) || bytes.Contains(r.Data, []byte("secret@")) {
				t.Fatalf("a blind recipient shows in what is sent:\n%s", r.Data)
			}
			if !bytes.Contains(r.Data, []byte("Resent-From: alerts@contoso.com\r\n")) {
				t.Fatalf("another Resent- field was dropped too:\n%s", r.Data)
			}
		})
	}
}

// TestRawRecipientsFromEveryField: a raw message whose envelope comes from
// its header names every recipient of every To, Cc and Bcc field, as
// relay sendmail -t and sendmail itself read them. RFC 5322 §3.6 allows
// each once, but a repeated one (two Bcc lines a script appended) is no
// reason to drop a recipient silently: its Bcc field is removed, so the
// recipient would not even see it was meant for them.
func TestRawRecipientsFromEveryField(t *testing.T) {
	raw := "From: alerts@contoso.com\r\nTo: a@contoso.com\r\nTo: b@contoso.com\r\n" +
		"Cc: c@contoso.com\r\nCc:\r\n d@contoso.com\r\nBcc:\r\nBcc: e@contoso.com\r\nBCC: f@contoso.com, a@contoso.com\r\nSubject: s\r\n\r\nbody\r\n"
	wantEnvelope(t, raw, "a@contoso.com b@contoso.com c@contoso.com d@contoso.com e@contoso.com f@contoso.com")
}

// wantEnvelope checks the envelope a raw message without to/cc/bcc gets.
func wantEnvelope(t *testing.T, raw, want string) {
	t.Helper()
	m := &Message{ID: "rr", Account: "alerts", Raw: []byte(raw)}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := m.Recipients()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != want {
		t.Fatalf("envelope %q, want %q", got, want)
	}
}

// TestRawRecipientsResent: a raw message without to/cc/bcc that is being
// resent goes to its Resent-To, Resent-Cc and Resent-Bcc fields alone, as
// relay sendmail -t (and Postfix) send it, not back to its To and Cc.
func TestRawRecipientsResent(t *testing.T) {
	raw := "Resent-From: alerts@contoso.com\r\nResent-To: new@contoso.com\r\nresent-bcc: hidden@contoso.com\r\n" +
		"From: am@example.org\r\nTo: old@contoso.com\r\nCc: older@contoso.com\r\nSubject: s\r\n\r\nbody\r\n"
	wantEnvelope(t, raw, "new@contoso.com hidden@contoso.com")
}

// TestRawLegacyCharsets: mail from Windows tools, NAS boxes and older
// scripts encodes display names in the charset of its system (RFC 2047
// §2 allows any registered charset), not UTF-8. Such a name in From, To
// or Cc must not make the message invalid: the relay reads its address
// (and, under rewrite, its name) like any other.
func TestRawLegacyCharsets(t *testing.T) {
	for _, tc := range []struct{ name, from, to, wantName string }{
		{"windows-1252", "=?windows-1252?Q?Caf=E9_=80?= <cafe@example.org>", "ops@contoso.com", "Café €"},
		{"iso-8859-15", "=?ISO-8859-15?Q?J=F6rg_=A4?= <j@example.org>", "=?iso-8859-15?q?S=E9verine?= <s@contoso.com>", "Jörg €"},
		{"koi8-r", "=?koi8-r?B?8NLJ18XU?= <p@example.org>", "ops@contoso.com", "Привет"},
		{"iso-2022-jp", "=?ISO-2022-JP?B?GyRCRWw1fhsoQg==?= <t@example.org>", "=?shift_jis?B?k4yLng==?= <tokyo@contoso.com>", "東京"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := "From: " + tc.from + "\r\nTo: " + tc.to + "\r\nSubject: s\r\n\r\nbody\r\n"
			m := &Message{ID: "cs", Account: "alerts", Raw: []byte(raw)}
			if err := m.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, rawNow)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
			if err != nil {
				t.Fatal(err)
			}
			from, err := mail.ParseAddress(msg.Header.Get("From"))
			if err != nil || from.Name != tc.wantName || from.Address != "alerts@contoso.com" {
				t.Fatalf("From %q reads back as %v (%v), want %q <alerts@contoso.com>", msg.Header.Get("From"), from, err, tc.wantName)
			}
			if len(r.Rcpts) != 1 || !strings.HasSuffix(r.Rcpts[0], "@contoso.com") {
				t.Fatalf("envelope %q", r.Rcpts)
			}
		})
	}
}

// StartBody inserts the empty line before the first line of the header
// section that is neither a field nor a continuation, and leaves a
// well-formed message (obsolete white space before the colon included)
// as it is.
func TestStartBody(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "\r\n"},
		{"hello\r\n", "\r\nhello\r\n"},
		{"hello", "\r\nhello"},
		{" indented\r\n", "\r\n indented\r\n"},
		{"Subject: a\r\n b\r\nsda1 is full\r\n\r\nmore\r\n", "Subject: a\r\n b\r\n\r\nsda1 is full\r\n\r\nmore\r\n"},
		{"Subject: a\r\n\r\nno header: here\r\n", "Subject: a\r\n\r\nno header: here\r\n"},
		{"Subject : obsolete\r\n\r\nbody\r\n", "Subject : obsolete\r\n\r\nbody\r\n"},
		{"Subject: only\r\n", "Subject: only\r\n"},
		{"\r\nbody\r\n", "\r\nbody\r\n"},
	} {
		if got := string(StartBody([]byte(tc.in))); got != tc.want {
			t.Errorf("StartBody(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestMendFieldNames: white space before a header field's colon (RFC
// 5322 §4.5.3, obs-optional) goes, in the header section only;
// continuation lines, the body and a raw without it stay as they are.
func TestMendFieldNames(t *testing.T) {
	for in, want := range map[string]string{
		"Subject : x\r\n\r\nbody\r\n":                     "Subject: x\r\n\r\nbody\r\n",
		"To: a@b\r\nX-A \t: y\r\n z : w\r\n\r\nC : d\r\n": "To: a@b\r\nX-A: y\r\n z : w\r\n\r\nC : d\r\n",
		"Subject: x : y\r\n\r\n":                          "Subject: x : y\r\n\r\n",
		"not a field : x\r\n\r\n":                         "not a field : x\r\n\r\n",
		"Subject :":                                       "Subject:",
		"":                                                "",
	} {
		if got := string(MendFieldNames([]byte(in))); got != want {
			t.Errorf("MendFieldNames(%q) = %q, want %q", in, got, want)
		}
	}
}
