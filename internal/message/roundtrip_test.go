package message

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"
)

// The round trip: a JSON message is rendered and the result is read back
// with independent parsers only (net/mail, mime, mime/multipart, which
// decodes quoted-printable itself, encoding/base64), never with this
// package's code. Whatever the producer gave must come back: every
// recipient with its display name, the subject and every extra header
// decoded (RFC 2047), the text and HTML (RFC 2045 §6.7; line breaks as
// CRLF, the canonical form of text, RFC 2046 §4.1.1), every attachment's
// name (RFC 2231), type and octets (RFC 2045 §6.8). And the rendered
// message keeps the rules a server holds it to: CRLF line endings only,
// no line past 998 octets (RFC 5322 §2.1.1), no header line of white
// space alone (RFC 5322 §3.2.2: a fold never leaves one), no Bcc field
// (RFC 5322 §3.6.3), 7-bit octets but for non-ASCII addresses (RFC 6532).

var roundTripSender = Sender{Mailbox: "alerts@contoso.com"}

// renderRoundTrip validates and renders m (its From, when given, must be
// the mailbox: the policy is not what this checks) and compares what the
// independent parsers read back with m.
func renderRoundTrip(t *testing.T, m *Message) []byte {
	t.Helper()
	if err := m.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	r, err := Render(m, roundTripSender, time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	checkRoundTrip(t, m, r.Data)
	return r.Data
}

func checkRoundTrip(t *testing.T, m *Message, data []byte) {
	t.Helper()
	if needsCRLF(data) {
		t.Fatalf("a bare CR or LF in the rendered message:\n%q", data)
	}
	head, _, ok := bytes.Cut(data, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no empty line ends the header section:\n%q", data)
	}
	for i, l := range strings.Split(string(data), "\r\n") {
		if len(l) > lineHard {
			t.Fatalf("line %d is %d octets long (RFC 5322 §2.1.1): %.80q…", i+1, len(l), l)
		}
	}
	asciiAddrs := !slices.ContainsFunc(slices.Concat(m.To, m.Cc, m.ReplyTo, []string{m.From}), func(a string) bool { return !asciiOnly(a) })
	for i, l := range strings.Split(string(head), "\r\n") {
		if strings.Trim(l, " \t") == "" {
			t.Fatalf("header line %d is white space alone (RFC 5322 §3.2.2):\n%s", i+1, head)
		}
		if asciiAddrs && !asciiOnly(l) {
			t.Fatalf("header line %d is not ASCII: %q", i+1, l)
		}
	}
	if asciiAddrs && !asciiOnly(data) {
		t.Fatalf("8-bit octets in a message that needs none")
	}

	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("net/mail cannot read the message: %v\n%s", err, data)
	}
	if _, ok := msg.Header["Bcc"]; ok {
		t.Fatalf("a Bcc field in what is sent:\n%s", head)
	}
	for _, b := range m.Bcc {
		a, _ := mail.ParseAddress(b)
		if !slices.ContainsFunc(slices.Concat(m.To, m.Cc, m.ReplyTo), func(s string) bool { return strings.Contains(s, a.Address) }) &&
			bytes.Contains(bytes.ToLower(head), []byte(strings.ToLower(a.Address))) {
			t.Fatalf("the Bcc recipient %s shows in the header section:\n%s", a.Address, head)
		}
	}
	for _, f := range []struct {
		name string
		list []string
	}{{"To", m.To}, {"Cc", m.Cc}, {"Reply-To", m.ReplyTo}} {
		checkAddressField(t, msg.Header, f.name, f.list)
	}
	if m.From != "" {
		checkAddressField(t, msg.Header, "From", []string{m.From})
	}
	dec := new(mime.WordDecoder)
	checkText := func(field, want string) {
		t.Helper()
		if len(msg.Header[field]) != 1 {
			t.Fatalf("%d %s fields, want 1:\n%s", len(msg.Header[field]), field, head)
		}
		got, err := dec.DecodeHeader(msg.Header.Get(field))
		if err != nil {
			t.Fatalf("%s %q does not decode: %v", field, msg.Header.Get(field), err)
		}
		// A reader drops the white space around a field body (RFC 5322
		// §3.2.2 makes it FWS); what an encoded-word carries it keeps.
		if got != want && got != strings.Trim(want, " \t") && !sameButFolds(got, want) {
			t.Fatalf("%s reads back as\n%q\nwant\n%q\nfrom\n%s", field, got, want, head)
		}
	}
	checkText("Subject", m.Subject)
	for k, v := range m.Headers {
		checkText(canonical(k), v)
	}

	ct, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	if len(m.Attachments) == 0 {
		checkAlternative(t, m, ct, params, msg.Header.Get("Content-Transfer-Encoding"), msg.Body)
		return
	}
	if ct != "multipart/mixed" {
		t.Fatalf("Content-Type %s with attachments, want multipart/mixed", ct)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	first, err := mr.NextPart()
	if err != nil {
		t.Fatalf("first part: %v", err)
	}
	fct, fparams, err := mime.ParseMediaType(first.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("first part's Content-Type %q: %v", first.Header.Get("Content-Type"), err)
	}
	checkAlternative(t, m, fct, fparams, "", first)
	for i, a := range m.Attachments {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("attachment %d: %v", i, err)
		}
		// The parameter itself: Part.FileName keeps only a path's last
		// element, as a client saving the file would.
		disp, dparams, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
		if err != nil || disp != "attachment" || dparams["filename"] != a.Filename {
			t.Fatalf("attachment %d's name reads back as %q (%v), want %q\nContent-Disposition: %s", i, dparams["filename"], err, a.Filename, p.Header.Get("Content-Disposition"))
		}
		wantType := "application/octet-stream"
		if a.ContentType != "" {
			wantType, _, _ = mime.ParseMediaType(a.ContentType)
		}
		if strings.HasPrefix(wantType, "multipart/") || strings.HasPrefix(wantType, "message/") {
			wantType = "application/octet-stream" // sent base64, which a composite type cannot be
		}
		if got, _, err := mime.ParseMediaType(p.Header.Get("Content-Type")); err != nil || got != wantType {
			t.Fatalf("attachment %d's type reads back as %q (%v), want %q", i, got, err, wantType)
		}
		if cte := p.Header.Get("Content-Transfer-Encoding"); !strings.EqualFold(cte, "base64") {
			t.Fatalf("attachment %d's Content-Transfer-Encoding %q", i, cte)
		}
		enc, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("attachment %d: %v", i, err)
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(enc), "\r\n"), "\r\n") {
			if len(l) > 76 {
				t.Fatalf("attachment %d has a base64 line of %d characters (RFC 2045 §6.8)", i, len(l))
			}
		}
		got, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(enc), "\r\n", ""))
		if err != nil || !bytes.Equal(got, a.Data) {
			t.Fatalf("attachment %d's content reads back as %q (%v), want %q", i, got, err, a.Data)
		}
	}
	if p, err := mr.NextPart(); err != io.EOF {
		t.Fatalf("a part more than the attachments: %v %v", p, err)
	}
}

// sameButFolds: RFC 5322 §2.2.3 unfolds by removing CRLF alone, but
// net/textproto (and not only it) makes all the white space around a fold
// one space; a run of white space where a line was folded may read back
// as one space.
func sameButFolds(got, want string) bool {
	collapse := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	return collapse(got) == collapse(want)
}

// checkAddressField: the field holds exactly the addresses of list, with
// their display names.
func checkAddressField(t *testing.T, h mail.Header, name string, list []string) {
	t.Helper()
	if len(list) == 0 {
		if name == "To" && h.Get("Cc") == "" {
			// Blind recipients alone: an empty group says so (RFC 5322
			// §3.6.3, §3.4), and the message is not without a destination.
			if got, err := h.AddressList("To"); err != nil || len(got) != 0 || !strings.HasSuffix(h.Get("To"), ":;") {
				t.Fatalf("To %q (%v) for blind recipients alone, want an empty group", h.Get("To"), err)
			}
			return
		}
		if _, ok := h[name]; ok && name != "Reply-To" {
			t.Fatalf("a %s field for no address", name)
		}
		return
	}
	if len(h[name]) != 1 {
		t.Fatalf("%d %s fields, want 1", len(h[name]), name)
	}
	got, err := h.AddressList(name)
	if err != nil {
		t.Fatalf("%s %q does not read back: %v", name, h.Get(name), err)
	}
	if len(got) != len(list) {
		t.Fatalf("%s reads back as %d addresses, want %d", name, len(got), len(list))
	}
	for i, s := range list {
		want, err := mail.ParseAddress(s)
		if err != nil {
			t.Fatal(err)
		}
		if got[i].Address != want.Address || (got[i].Name != want.Name && !sameButFolds(got[i].Name, want.Name)) {
			t.Fatalf("%s address %d reads back as %q <%s>, want %q <%s>\n%s: %s", name, i, got[i].Name, got[i].Address, want.Name, want.Address, name, h.Get(name))
		}
	}
}

// checkAlternative reads the text part(s): text/plain, text/html or
// multipart/alternative of both, as Render writes them.
func checkAlternative(t *testing.T, m *Message, ct string, params map[string]string, cte string, body io.Reader) {
	t.Helper()
	readText := func(what string, r io.Reader) string {
		t.Helper()
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return string(b)
	}
	switch {
	case m.Text != "" && m.HTML != "":
		if ct != "multipart/alternative" {
			t.Fatalf("Content-Type %s for text and HTML", ct)
		}
		mr := multipart.NewReader(body, params["boundary"])
		for _, want := range []struct{ ct, text string }{{"text/plain", m.Text}, {"text/html", m.HTML}} {
			p, err := mr.NextPart()
			if err != nil {
				t.Fatalf("%s part: %v", want.ct, err)
			}
			checkTextPart(t, p.Header.Get("Content-Type"), want.ct)
			if got := readText(want.ct, p); got != crlfText(want.text) {
				t.Fatalf("%s reads back as %q, want %q", want.ct, got, crlfText(want.text))
			}
		}
		if _, err := mr.NextPart(); err != io.EOF {
			t.Fatalf("a third part in multipart/alternative: %v", err)
		}
	default:
		want, text := "text/plain", m.Text
		if m.HTML != "" {
			want, text = "text/html", m.HTML
		}
		checkTextPart(t, mime.FormatMediaType(ct, params), want)
		if cte != "" { // the top level: multipart.Reader decodes only parts
			if !strings.EqualFold(cte, "quoted-printable") {
				t.Fatalf("Content-Transfer-Encoding %q", cte)
			}
			body = quotedprintable.NewReader(body)
		}
		if got := readText(want, body); got != crlfText(text) {
			t.Fatalf("%s reads back as %q, want %q", want, got, crlfText(text))
		}
	}
}

func checkTextPart(t *testing.T, header, want string) {
	t.Helper()
	ct, params, err := mime.ParseMediaType(header)
	if err != nil || ct != want || !strings.EqualFold(params["charset"], "utf-8") {
		t.Fatalf("Content-Type %q (%v), want %s; charset=utf-8", header, err, want)
	}
}

// crlfText is text as a text/* part carries it: every line break CRLF
// (RFC 2046 §4.1.1), a bare CR or LF included.
func crlfText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

func asciiOnly[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// roundTripCases are messages a producer may well send: each must come
// back whole (TestRoundTrip), and each is a seed of FuzzRoundTrip.
var roundTripCases = []struct {
	name string
	m    Message
}{
	{"plain", Message{To: []string{"ops@contoso.com"}, Subject: "CPU high on web-3", Text: "load 17.2\n"}},
	{"display names that need quoting", Message{
		From:    "Alerts <alerts@contoso.com>",
		To:      []string{`"Ops, Team" <ops@contoso.com>`, `"Jo \"JJ\" Smith" <jo@contoso.com>`, `"back\\slash" <b@contoso.com>`, `"(paren)" <p@contoso.com>`},
		Cc:      []string{"Zoë Ünal <zoe@contoso.com>", `"Jörg, Ops (on call)" <j@contoso.com>`, `"東京 \\ 大阪" <t@contoso.com>`},
		ReplyTo: []string{"oncall@contoso.com"}, Bcc: []string{"boss@contoso.com"},
		Subject: "s", Text: "t"}},
	{"emoji and mixed scripts", Message{To: []string{"ops@contoso.com"},
		Subject: "🔥 Störung: 東京 — Привет مرحبا 🚨🚨", Text: "Grüße 🌍\n", HTML: "<p>東京</p>"}},
	{"long non-ASCII subject", Message{To: []string{"ops@contoso.com"}, Subject: strings.Repeat("Störung im Rechenzentrum Köln 🔥 ", 40), Text: "x"}},
	{"Alertmanager's subject", Message{To: []string{"ops@contoso.com"}, Subject: alertmanagerSubject(), Text: "x"}},
	{"quoted-printable edges", Message{To: []string{"ops@contoso.com"}, Subject: "qp",
		Text: "trailing space \ntrailing tab\t\n=3D and = signs\n" + strings.Repeat("x", 200) + "\n.\n.leading dot\nFrom here\r\nCRLF\rbare CR\n\n",
		HTML: "<p style=\"a:b\">" + strings.Repeat("é", 100) + "</p> "}},
	// A bare CR ends a line (RFC 2046 §4.1.1 text has CRLF only); a
	// bare CR, an octet the encoder escapes and then an LF lost the
	// second line break.
	{"bare CR before an escaped octet", Message{To: []string{"ops@contoso.com"}, Subject: "cr",
		Text: "Status:\ré\nnext\r=\nlast\r\x10\n", HTML: "<p>a</p>\r€\n<p>b</p>"}},
	{"html only", Message{To: []string{"ops@contoso.com"}, Subject: "h", HTML: "<b>x</b>"}},
	{"no text at all", Message{To: []string{"ops@contoso.com"}, Subject: "empty"}},
	{"attachments", Message{To: []string{"ops@contoso.com"}, Subject: "graphs", Text: "see graphs",
		Attachments: []Attachment{
			{Filename: "graph.png", ContentType: "image/png", Data: bytes.Repeat([]byte{0x89, 'P', 'N', 'G', 0, 1, 2, 255}, 100)},
			{Filename: "résumé été.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.7")},
			{Filename: "a \"quoted\" name;x=y.txt", Data: []byte("q")},
			{Filename: "empty", Data: nil},
			{Filename: "東京レポート.csv", ContentType: "text/csv; charset=utf-8", Data: []byte("a,b\r\n")},
		}}},
	{"text, html and attachments", Message{To: []string{"ops@contoso.com"}, Subject: "all", Text: "t", HTML: "<p>h</p>",
		Attachments: []Attachment{{Filename: "x.bin", Data: []byte{0, 1, 2}}}}},
	// RFC 2231 §7: an extended value is attribute-chars and %XX only; a
	// ':', '=' or '@' left bare ended the parameter, and the name was lost.
	{"long attachment names with specials", Message{To: []string{"ops@contoso.com"}, Subject: "export", Text: "x",
		Attachments: []Attachment{
			{Filename: "grafana-export-2026-12-07T18:00:00Z-node=web-3@prod+dashboard$1&2.csv", Data: []byte("a")},
			{Filename: strings.Repeat("ü=:@,;()<>[]?\"' *%&+$#!~", 4) + ".txt", Data: []byte("b")},
		}}},
	// RFC 2047 §6.2: white space between two encoded-words is not text.
	// Two long words, each cut into encoded-words, read back as one.
	{"adjacent long words", Message{To: []string{"ops@contoso.com"}, Text: "x",
		Subject: strings.Repeat("A", 100) + " " + strings.Repeat("B", 100) + "  " + strings.Repeat("C", 90) + " d " + strings.Repeat("E", 80),
		Headers: map[string]string{"X-Urls": "https://grafana.contoso.com/d/" + strings.Repeat("x", 80) + " https://prometheus.contoso.com/graph?g0.expr=" + strings.Repeat("y", 80)}}},
	// RFC 5322 §3.2.2: a fold is CRLF before white space that is
	// followed by text; two folds in a row (a line of white space alone)
	// are obsolete syntax (§4.2) that a generator must not write.
	{"white space only", Message{To: []string{"ops@contoso.com"}, Text: "x", Subject: strings.Repeat(" ", 200),
		Headers: map[string]string{"X-Tabs": strings.Repeat(" \t", 100), "X-Trailing": "x" + strings.Repeat(" ", 150),
			"X-Tabs-Long": strings.Repeat(" \t", 600), "X-Tab-Runs": "a" + strings.Repeat(" \t", 600) + "b"}}},
	{"runs of white space", Message{To: []string{`"a` + strings.Repeat(" ", 200) + `b" <ops@contoso.com>`}, Text: "x",
		Subject: "a" + strings.Repeat(" ", 300) + "b" + strings.Repeat(" \t ", 60) + "c"}},
	// RFC 5322 §2.1.1: no line past 998. A display name without a space
	// to fold at (a hostname, a label set) was one quoted word.
	{"long display names", Message{From: strings.Repeat("N", 1200) + " <alerts@contoso.com>", Text: "x", Subject: "s",
		To: []string{`"` + strings.Repeat("web-3.prod.contoso.com:9100,", 40) + `" <ops@contoso.com>`, "Short <s@contoso.com>"},
		Cc: []string{"Ops " + strings.Repeat("é", 600) + " <c@contoso.com>", `"` + strings.Repeat(`\"`, 500) + `" <q@contoso.com>`}}},
	// RFC 2045 §5.1: the type is written as a header, so it must be one:
	// no control characters, no 8-bit octets, folded when long.
	{"attachment types", Message{To: []string{"ops@contoso.com"}, Subject: "types", Text: "x",
		Attachments: []Attachment{
			{Filename: "a.csv", ContentType: "\tText/CSV ; Charset=\"UTF-8\"; header=present", Data: []byte("a,b")},
			{Filename: "b.txt", ContentType: "text/plain; x-note=\"Grüße\"", Data: []byte("b")},
			{Filename: "c.bin", ContentType: "application/x-thing; a=\"" + strings.Repeat("v ", 60) + "\"; b=" + strings.Repeat("w", 70) + "; c=\"(x)\"", Data: []byte("c")},
			{Filename: "d.bin", ContentType: "application/octet-stream\f", Data: []byte("d")},
			// RFC 2045 §6.4: a composite type's body is never base64.
			{Filename: "saved.eml", ContentType: "message/rfc822", Data: []byte("Subject: x\r\n\r\nhi\r\n")},
			{Filename: "parts", ContentType: "multipart/mixed; boundary=x", Data: []byte("--x--\r\n")},
		}}},
	// Text that has the form of an encoded-word is read as one (RFC 2047
	// §6.1); the relay encodes the subject, so such text must come back
	// as it was written.
	{"text that looks like encoded-words", Message{To: []string{"ops@contoso.com"}, Text: "x",
		Subject: "disk at =?utf-8?q?50=25?= =?utf-8?b?Zm9v?= on x=?y?=z",
		Headers: map[string]string{"X-Expr": "rate(x[5m]) =?iso-8859-1?q?=E9?= > 0"}}},
	{"blind recipients alone", Message{Bcc: []string{"a@contoso.com", "b@contoso.com"}, Subject: "bcc", Text: "x"}},
	{"extra headers", Message{To: []string{"ops@contoso.com"}, Subject: "h", Text: "t",
		Headers: map[string]string{"X-Alert-Id": "7f3a", "X-Note": "naïve café", "X-Empty": "", "X-Long": strings.Repeat("label=value ", 120)}}},
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range roundTripCases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			m.ID, m.Account = "rt", "alerts"
			renderRoundTrip(t, &m)
		})
	}
}

// FuzzRoundTrip: any message that validates renders to one the
// independent parsers read back whole (checkRoundTrip), for any subject,
// display name, text, HTML, header value and attachment name, type and
// content. Seeds: roundTripCases.
func FuzzRoundTrip(f *testing.F) {
	for _, tc := range roundTripCases {
		m := tc.m
		var hv, fn, ct string
		var data []byte
		for _, v := range m.Headers {
			hv = v
			break
		}
		if len(m.Attachments) > 0 {
			fn, ct, data = m.Attachments[0].Filename, m.Attachments[0].ContentType, m.Attachments[0].Data
		}
		name := ""
		if len(m.To) > 0 {
			if a, err := mail.ParseAddress(m.To[0]); err == nil {
				name = a.Name
			}
		}
		f.Add(m.Subject, name, m.Text, m.HTML, hv, fn, ct, data)
	}
	f.Fuzz(func(t *testing.T, subject, name, text, html, header, filename, contentType string, data []byte) {
		m := &Message{ID: "fz", Account: "alerts", Subject: subject, Text: text, HTML: html,
			To:      []string{(&mail.Address{Name: name, Address: "ops@contoso.com"}).String()},
			Cc:      []string{"cc@contoso.com"},
			Bcc:     []string{"blind@contoso.com"},
			Headers: map[string]string{"X-Fuzz": header}}
		if filename != "" {
			m.Attachments = []Attachment{{Filename: filename, ContentType: contentType, Data: data}}
		}
		if err := m.Validate(); err != nil {
			if !IsInvalid(err) {
				t.Fatalf("not an *Invalid: %v", err)
			}
			return
		}
		r, err := Render(m, roundTripSender, time.Unix(0, 0))
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("not an *Invalid: %v", err)
			}
			return
		}
		checkRoundTrip(t, m, r.Data)
	})
}
