package message

import (
	"bytes"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"
)

// lines splits a CRLF message's header block into its physical lines.
func headerLines(t *testing.T, data []byte) []string {
	t.Helper()
	hdr, _, ok := bytes.Cut(data, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no header block in %q", data)
	}
	return strings.Split(string(hdr), "\r\n")
}

// alertmanagerSubject is what Alertmanager's default template makes of a
// group of alerts: every label of every alert, easily past 998.
func alertmanagerSubject() string {
	var b strings.Builder
	b.WriteString("[FIRING:40] HighLoad (")
	for i := range 40 {
		b.WriteString("instance=web-")
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(".prod.contoso.com:9100 job=node severity=page ")
	}
	b.WriteString(")")
	return b.String()
}

// TestLongHeadersFold: whatever a producer puts in a subject, a header or
// an attachment's name, every rendered header line is at most 78
// characters where words allow it and never past 998 (RFC 5322 §2.1.1),
// and reading the message back gives exactly what was sent.
func TestLongHeadersFold(t *testing.T) {
	for name, tc := range map[string]struct{ subject, header, filename string }{
		"Alertmanager's default subject": {alertmanagerSubject(), "", ""},
		"a 2,000 character word":         {strings.Repeat("A", 2000), strings.Repeat("h", 1500), ""},
		"non-ASCII, long":                {strings.Repeat("Störung im Rechenzentrum Köln ", 70), "Grüße " + strings.Repeat("ä", 600), ""},
		"a long attachment name":         {"report", "", strings.Repeat("grafana-dashboard-export-", 12) + "ü.pdf"},
	} {
		t.Run(name, func(t *testing.T) {
			m := &Message{ID: "fold", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: tc.subject, Text: "x"}
			if tc.header != "" {
				m.Headers = map[string]string{"X-Alert-Labels": tc.header}
			}
			if tc.filename != "" {
				m.Attachments = []Attachment{{Filename: tc.filename, ContentType: "application/pdf", Data: []byte("%PDF-1.7")}}
			}
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(r.Data), "\r\n") {
				if len(l) > lineHard {
					t.Fatalf("a line of %d characters: %.60q…", len(l), l)
				}
			}
			for _, l := range headerLines(t, r.Data) {
				// A word of more than 78 characters that is not an
				// encoded-word would mean the folding gave up.
				if len(l) > lineSoft && strings.Contains(strings.TrimSpace(l), " ") {
					t.Errorf("a header line of %d characters that could fold: %q", len(l), l)
				}
			}
			msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
			if err != nil {
				t.Fatal(err)
			}
			dec := new(mime.WordDecoder)
			if got, err := dec.DecodeHeader(msg.Header.Get("Subject")); err != nil || got != tc.subject {
				t.Fatalf("subject read back %q (%v), want the one sent", got, err)
			}
			if tc.header != "" {
				if got, err := dec.DecodeHeader(msg.Header.Get("X-Alert-Labels")); err != nil || got != tc.header {
					t.Fatalf("header read back %q (%v)", got, err)
				}
			}
			if tc.filename != "" {
				i := bytes.Index(r.Data, []byte("Content-Disposition: "))
				end := bytes.Index(r.Data[i:], []byte("\r\nContent-Transfer-Encoding"))
				value := strings.ReplaceAll(string(r.Data[i+len("Content-Disposition: "):i+end]), "\r\n", "")
				_, params, err := mime.ParseMediaType(value)
				if err != nil || params["filename"] != tc.filename {
					t.Fatalf("attachment name read back %q (%v) from %q", params["filename"], err, value)
				}
			}
		})
	}
}

func TestEncodedWords(t *testing.T) {
	for _, s := range []string{strings.Repeat("a", 1000), strings.Repeat("€", 300), "x"} {
		words := encodedWords(s)
		var got strings.Builder
		for _, w := range words {
			if len(w) > maxEncodedLen {
				t.Fatalf("an encoded-word of %d characters", len(w))
			}
			d, err := new(mime.WordDecoder).Decode(w)
			if err != nil {
				t.Fatal(err)
			}
			got.WriteString(d)
		}
		if got.String() != s {
			t.Fatalf("decoded %q, want %q", got.String(), s)
		}
	}
}

// TestRawLongLines: a raw message's header line past 998 is folded at its
// white space; one with none, and a body line past 998, are refused with a
// reason that says what to do.
func TestRawLongLines(t *testing.T) {
	long := alertmanagerSubject()
	got, err := renderRawString(t, "To: ops@contoso.com\r\nSubject: "+long+"\r\n\r\nbody\r\n", Sender{Mailbox: "alerts@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(got, "\r\n") {
		if len(l) > lineHard {
			t.Fatalf("a line of %d octets left", len(l))
		}
	}
	msg, err := mail.ReadMessage(strings.NewReader(got))
	if err != nil || msg.Header.Get("Subject") != long {
		t.Fatalf("folded subject reads back as %q (%v)", msg.Header.Get("Subject"), err)
	}
	for raw, want := range map[string]string{
		"To: ops@contoso.com\r\nSubject: " + strings.Repeat("x", 1200) + "\r\n\r\nbody\r\n":   "no space to fold it at",
		"To: ops@contoso.com\r\nSubject: s\r\n\r\nok\r\n" + strings.Repeat("y", 999) + "\r\n": "line 2 of the body is 999 octets long",
	} {
		if _, err := renderRawString(t, raw, Sender{Mailbox: "alerts@contoso.com"}); !IsInvalid(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("%.50q…: %v, want an invalid-message error about %q", raw, err, want)
		}
	}
}

// TestFoldedInnerHeaderKeepsItsBoundary: text, HTML and an attachment make
// a multipart/alternative inside multipart/mixed, whose folded
// Content-Type (the boundary on its own line) must survive being written
// again as the first part's header; every part reads back.
func TestFoldedInnerHeaderKeepsItsBoundary(t *testing.T) {
	m := &Message{ID: "nested", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "s",
		Text: "plain", HTML: "<p>html</p>", Attachments: []Attachment{{Filename: "a.txt", Data: []byte("hi")}}}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	first, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	ct, inner, err := mime.ParseMediaType(first.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/alternative" || inner["boundary"] == "" {
		t.Fatalf("first part Content-Type %q (%v): the folded boundary was lost", first.Header.Get("Content-Type"), err)
	}
	ir := multipart.NewReader(first, inner["boundary"])
	for _, want := range []string{"text/plain", "text/html"} {
		p, err := ir.NextPart()
		if err != nil || !strings.HasPrefix(p.Header.Get("Content-Type"), want) {
			t.Fatalf("inner part %v %v, want %s", p, err, want)
		}
	}
}

// TestRawFoldNeverLeavesWhiteSpaceAlone: a raw header line past 998 is
// folded at white space that text follows and precedes, so neither side
// of a fold is a line of white space alone (RFC 5322 §3.2.2; §4.2 calls
// such lines obsolete syntax a generator must not write). White space
// past the limit at the end of a field carries nothing a reader keeps
// and goes; a run of white space longer than a line has no fold and
// the message is refused.
func TestRawFoldNeverLeavesWhiteSpaceAlone(t *testing.T) {
	sender := Sender{Mailbox: "alerts@contoso.com"}
	for _, tc := range []struct {
		name, value string
		refused     bool
	}{
		{"a long run of spaces inside words", strings.Repeat("w ", 300) + strings.Repeat(" ", 700) + "end", false},
		{"trailing white space past the limit", "start " + strings.Repeat(" \t", 700), false},
		{"a run of white space longer than a line", "a" + strings.Repeat(" ", 2000) + "b", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := renderRawString(t, "To: ops@contoso.com\r\nX-Long: "+tc.value+"\r\n\r\nbody\r\n", sender)
			if tc.refused {
				if !IsInvalid(err) {
					t.Fatalf("got %v, want the message refused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range headerLines(t, []byte(got)) {
				if len(l) > lineHard {
					t.Fatalf("a header line of %d octets", len(l))
				}
				if strings.Trim(l, " \t") == "" {
					t.Fatalf("a header line of white space alone (%d octets)", len(l))
				}
			}
			msg, err := mail.ReadMessage(strings.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			if v := msg.Header.Get("X-Long"); strings.Join(strings.Fields(v), " ") != strings.Join(strings.Fields(tc.value), " ") {
				t.Fatalf("X-Long reads back as %.80q…", v)
			}
		})
	}
}

// TestStructuredHeadersNeverEncoded: a producer's In-Reply-To and
// References hold msg-ids, and List-Unsubscribe and the other RFC 2369
// fields URLs in angle brackets. RFC 2047 §5 allows encoded-words only
// in text, comments and phrases, never in a msg-id or a URL: a reader
// takes them as they stand. Office 365's own Message-IDs are about 80
// characters long, and unsubscribe links longer; they are folded at
// white space only, never encoded, so threading and one-click
// unsubscribe keep working. So is every other structured field a
// producer may set (DKIM-Signature, Autocrypt, Received, ...): written as
// given, and refused at publish when not ASCII or with a word no line
// holds, the producer encoding a phrase or comment itself.
func TestStructuredHeadersNeverEncoded(t *testing.T) {
	exchangeID := "<DM6PR11MB4315F6F1B2B5E8A0C9F3B4A4C8A09A1B@DM6PR11MB4315.namprd11.prod.outlook.com>"
	headers := map[string]string{
		"In-Reply-To":      exchangeID,
		"References":       "<a@contoso.com> " + exchangeID + " " + strings.Replace(exchangeID, "DM6", "BY5", 1),
		"List-Unsubscribe": "<https://alerts.contoso.com/unsubscribe?list=ops&token=" + strings.Repeat("0123456789abcdef", 5) + ">, <mailto:unsubscribe@contoso.com>",
		"List-Id":          "Ops alerts <ops-alerts.contoso.com>",
		// Other structured fields a producer may set are written as
		// given too (RFC 2047 §5): a long word was encoded, which
		// corrupted a DKIM signature's b= and Autocrypt's keydata.
		"Dkim-Signature":              "v=1; a=rsa-sha256; d=contoso.com; s=s1; b=" + strings.Repeat("AbCdEf0123456789+/", 12) + "==",
		"Autocrypt":                   "addr=alerts@contoso.com; keydata=" + strings.Repeat("mQENBF", 20),
		"Disposition-Notification-To": "Ops (on call) <ops@contoso.com>",
	}
	m := &Message{ID: "st", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "s", Text: "x", Headers: headers}
	data := renderRoundTrip(t, m)
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if got := msg.Header.Get(k); got != v {
			t.Errorf("%s reads back as\n%q\nwant\n%q", k, got, v)
		}
	}
	for _, bad := range []map[string]string{
		{"References": "<Störung@contoso.com>"},                               // RFC 2047 §5: no encoded-word in a msg-id
		{"List-Unsubscribe": "<https://x/" + strings.Repeat("y", 1000) + ">"}, // a word no line holds (RFC 5322 §2.1.1)
		// Structured fields other than ids and URLs: ASCII only, the
		// producer encoding a phrase or comment itself.
		{"Autocrypt": "addr=störung@contoso.com; keydata=mQENBF"},
		{"Disposition-Notification-To": "Störung <ops@contoso.com>"},
		{"Received": "from störung.contoso.com by relay; Sat, 05 Dec 2026 09:30:00 +0000"},
		{"Authentication-Results": "contoso.com; dkim=pass header.d=störung.example"},
		{"Resent-To": "Störung <ops@contoso.com>"},
		{"List-Id": "Störungen <ops-alerts.contoso.com>"},
		{"Dkim-Signature": "v=1; b=" + strings.Repeat("A", 1000)},
		// MIME fields but Content-Description (RFC 2183 §2 and RFC 2231
		// for a parameter, RFC 3282 §2 language tags).
		{"Content-Disposition": "inline; filename=störung.txt"},
		{"Content-Language": "dé"},
	} {
		m := &Message{ID: "st", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "s", Text: "x", Headers: bad}
		if err := m.Validate(); !IsInvalid(err) {
			t.Errorf("%v: %v, want the header refused", bad, err)
		}
	}
}

// TestContentDescriptionIsText: Content-Description is unstructured
// text (RFC 2045 §8, "*text"), which RFC 2047 §5(1) allows encoded-words
// in; a producer's non-ASCII description is encoded and reads back as
// given, not refused as a structured field.
func TestContentDescriptionIsText(t *testing.T) {
	desc := "Störungsmeldung für web-3"
	m := &Message{ID: "cd", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "s", Text: "x",
		Headers: map[string]string{"Content-Description": desc}}
	if err := m.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	data := renderRoundTrip(t, m)
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	got, err := headerDecoder.DecodeHeader(msg.Header.Get("Content-Description"))
	if err != nil || got != desc {
		t.Errorf("Content-Description reads back as %q (%v), want %q", got, err, desc)
	}
}

// TestMendLongField: a field the worker folds is left as it is; one it
// cannot is written anew only where a reader sees the same text, and
// structured fields or text of an unknown charset are not.
func TestMendLongField(t *testing.T) {
	long := strings.Repeat("a", 1200)
	tests := []struct {
		name, field string
		ok          bool
		changed     bool
	}{
		{"foldable", "Subject: " + strings.Repeat("word ", 300) + "\r\n", true, false},
		{"short", "Subject: x\r\n", true, false},
		{"subject, one long word", "Subject: alert " + long + "\r\n", true, true},
		{"X- field", "X-Payload: " + long + "\r\n", true, true},
		{"References", "References: " + strings.Repeat("<a@b.example>", 100) + "\r\n", true, true},
		{"Content-Type", "Content-Type: text/plain; x=" + long + "\r\n", false, false},
		{"DKIM", "DKIM-Signature: b=" + long + "\r\n", false, false},
		{"not UTF-8", "Subject: caf\xe9" + long + "\r\n", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := MendLongField([]byte(tt.field))
			if ok != tt.ok || (ok && (string(got) != tt.field) != tt.changed) {
				t.Fatalf("ok %v, changed %v:\n%q", ok, string(got) != tt.field, got)
			}
			if !ok {
				return
			}
			if _, folded := foldRaw(got); !folded {
				t.Fatalf("still not foldable: %q", got)
			}
			name, _, _ := strings.Cut(tt.field, ":")
			h, err := mail.ReadMessage(strings.NewReader(string(got) + "\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := new(mime.WordDecoder).DecodeHeader(strings.TrimSpace(strings.SplitN(tt.field, ":", 2)[1]))
			read, err := new(mime.WordDecoder).DecodeHeader(h.Header.Get(name))
			if name == "References" {
				read = strings.ReplaceAll(read, " ", "")
			}
			if err != nil || read != want {
				t.Fatalf("reads %q (%v), want %q", read, err, want)
			}
		})
	}
}

// TestSyntaxOf: the one list of structured fields (structuredFields and
// its prefixes) gives what the two lists it replaced gave: a producer's
// message ids and URLs taken as they stand, other structured fields
// (named, or by family) never encoded when mended, and text otherwise.
func TestSyntaxOf(t *testing.T) {
	for name, want := range map[string]fieldSyntax{
		"In-Reply-To": idsOrURLs, "References": idsOrURLs, "Content-Id": idsOrURLs, "Archived-At": idsOrURLs,
		"List-Unsubscribe": idsOrURLs, "List-Unsubscribe-Post": idsOrURLs, "List-Archive": idsOrURLs,
		"From": ownSyntax, "Message-Id": ownSyntax, "Keywords": ownSyntax, "Autocrypt": ownSyntax,
		"Content-Type": ownSyntax, "Content-Disposition": ownSyntax, "Content-Language": ownSyntax,
		"Content-Transfer-Encoding": ownSyntax, "List-Id": ownSyntax, "Resent-To": ownSyntax,
		"Dkim-Signature": ownSyntax, "Arc-Seal": ownSyntax,
		"Subject": textSyntax, "Comments": textSyntax, "X-Alert-Name": textSyntax, "Thread-Topic": textSyntax,
		"Content-Description": textSyntax, // RFC 2045 §8: *text
	} {
		if got := syntaxOf(name); got != want {
			t.Errorf("syntaxOf(%q) = %d, want %d", name, got, want)
		}
		if structured(name) != (want != textSyntax) {
			t.Errorf("structured(%q) = %v", name, structured(name))
		}
	}
}
