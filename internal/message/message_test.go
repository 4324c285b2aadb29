package message

import (
	"bytes"
	"flag"
	"fmt"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func valid() *Message {
	return &Message{ID: "m1", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "CPU high", Text: "body"}
}

func TestValidate(t *testing.T) {
	many := make([]string, MaxRecipients+1)
	for i := range many {
		many[i] = "u@contoso.com"
	}
	// More than one transaction's worth is fine: the relay splits it.
	split := make([]string, RecipientsPerTransaction+100)
	for i := range split {
		split[i] = fmt.Sprintf("u%d@contoso.com", i)
	}
	tests := []struct {
		name   string
		mutate func(m *Message)
		field  string // "" means valid
	}{
		{"valid", func(m *Message) {}, ""},
		{"no recipients", func(m *Message) { m.To = nil }, "to"},
		{"bcc only is fine", func(m *Message) { m.To = nil; m.Bcc = []string{"x@y.com"} }, ""},
		{"bad address", func(m *Message) { m.To = []string{"not an address"} }, "to"},
		{"CRLF in subject", func(m *Message) { m.Subject = "hi\r\nBcc: victim@evil.com" }, "subject"},
		{"LF in header value", func(m *Message) { m.Headers = map[string]string{"X-A": "a\nb"} }, "headers.X-A"},
		{"CR in address", func(m *Message) { m.Cc = []string{"a@b.com\r\nRCPT TO:<x@y>"} }, "cc"},
		{"CR in from", func(m *Message) { m.From = "A <a@b.com>\rX: y" }, "from"},
		{"bad header name", func(m *Message) { m.Headers = map[string]string{"X A": "v"} }, "headers"},
		{"reserved header", func(m *Message) { m.Headers = map[string]string{"bcc": "v"} }, "headers"},
		// RFC 5322 §3.6.6: Office 365 may take a Resent-From for the
		// sender; through headers it would pass the From policy by.
		// Office 365 delivers to domain names: a recipient at an
		// address literal or at what is no domain is refused before it
		// is queued, as the SMTP front door refuses it at RCPT.
		{"address literal recipient", func(m *Message) { m.To = []string{"ops@[192.0.2.1]"} }, "to"},
		{"recipient domain with a leading hyphen", func(m *Message) { m.Cc = []string{"ops@-contoso.com"} }, "cc"},
		{"recipient domain with an underscore", func(m *Message) { m.Bcc = []string{"ops@con_toso.com"} }, "bcc"},
		{"recipient at an internationalised domain", func(m *Message) { m.To = []string{"ops@münchen.de"} }, ""},
		{"reserved Resent-From", func(m *Message) { m.Headers = map[string]string{"Resent-From": "ceo@example.org"} }, "headers"},
		{"reserved Resent-Sender", func(m *Message) { m.Headers = map[string]string{"resent-sender": "ceo@example.org"} }, "headers"},
		{"bad account", func(m *Message) { m.Account = "Alerts.Prod" }, "account"},
		{"missing account", func(m *Message) { m.Account = "" }, "account"},
		{"too many recipients", func(m *Message) { m.To = many }, "to"},
		{"600 recipients go in batches", func(m *Message) { m.To = split }, ""},
		{"attachment without name", func(m *Message) { m.Attachments = []Attachment{{Data: []byte("x")}} }, "attachments[0]"},
		{"attachment bad type", func(m *Message) {
			m.Attachments = []Attachment{{Filename: "a", ContentType: "image/png; x", Data: []byte("x")}}
		}, "attachments[0].content_type"},
		{"raw plus fields", func(m *Message) { m.Raw = []byte("To: a@b.com\r\n\r\nx") }, "raw"},
		{"raw ok", func(m *Message) {
			m.Subject, m.Text, m.To = "", "", nil
			m.Raw = []byte("To: a@b.com\r\nSubject: x\r\n\r\nbody\r\n")
		}, ""},
		// RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its
		// angle brackets; a longer address can be neither sent nor
		// folded into a header line of 998.
		{"address longer than SMTP carries", func(m *Message) { m.To = []string{strings.Repeat("a", 1000) + "@contoso.com"} }, "to"},
		{"long domain in from", func(m *Message) { m.From = "a@" + strings.Repeat("b.", 130) + "com" }, "from"},
		{"longest address SMTP carries", func(m *Message) {
			m.To = []string{strings.Repeat("a", 64) + "@" + strings.Repeat("b", 61) + "." + strings.Repeat("b", 61) + "." + strings.Repeat("b", 61) + ".com"}
		}, ""},
		{"address too long in raw", func(m *Message) {
			m.Subject, m.Text, m.To = "", "", nil
			m.Raw = []byte("To: " + strings.Repeat("a", 1000) + "@contoso.com\r\n\r\nbody\r\n")
		}, "raw"},
		// RFC 5322 §2.1.1: a field name cannot be folded, so a name of
		// a thousand characters made a line past 998.
		{"header name too long", func(m *Message) { m.Headers = map[string]string{"X-" + strings.Repeat("n", 1000): "v"} }, "headers"},
		{"header name as long as a line allows", func(m *Message) { m.Headers = map[string]string{"X-" + strings.Repeat("n", 74): "v"} }, ""},
		// An attachment's type is a type/subtype (RFC 2045 §5.1).
		{"attachment type without a subtype", func(m *Message) {
			m.Attachments = []Attachment{{Filename: "a", ContentType: "\f0", Data: []byte("x")}}
		}, "attachments[0].content_type"},
		{"attachment type with a parameter too long for a line", func(m *Message) {
			m.Attachments = []Attachment{{Filename: "a", ContentType: "text/plain; x=" + strings.Repeat("y", 1000), Data: []byte("x")}}
		}, "attachments[0].content_type"},
		{"attachment type with parameters", func(m *Message) {
			m.Attachments = []Attachment{{Filename: "a", ContentType: "\tText/CSV ; Charset=\"UTF-8\"; header=present", Data: []byte("x")}}
		}, ""},
		{"raw without recipients", func(m *Message) {
			m.Subject, m.Text, m.To = "", "", nil
			m.Raw = []byte("Subject: x\r\n\r\nbody\r\n")
		}, "to"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.mutate(m)
			err := m.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			inv, ok := err.(*Invalid)
			if !ok {
				t.Fatalf("want *Invalid on %s, got %v", tc.field, err)
			}
			if inv.Field != tc.field {
				t.Fatalf("field = %q, want %q (%v)", inv.Field, tc.field, err)
			}
		})
	}
}

func TestBatches(t *testing.T) {
	rcpts := make([]string, 1201)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("u%d@contoso.com", i)
	}
	r := &Rendered{Rcpts: rcpts}
	tests := []struct {
		size int
		want []int
	}{
		{0, []int{500, 500, 201}},    // default: Office 365's 500
		{500, []int{500, 500, 201}},  //
		{1000, []int{500, 500, 201}}, // never above 500
		{400, []int{400, 400, 400, 1}},
	}
	for _, tc := range tests {
		got := r.Batches(tc.size)
		var sizes []int
		var joined []string
		for _, b := range got {
			sizes = append(sizes, len(b))
			joined = append(joined, b...)
		}
		if fmt.Sprint(sizes) != fmt.Sprint(tc.want) || fmt.Sprint(joined) != fmt.Sprint(rcpts) {
			t.Errorf("Batches(%d) sizes %v, want %v (and every recipient once, in order)", tc.size, sizes, tc.want)
		}
	}
	if got := (&Rendered{Rcpts: rcpts[:3]}).Batches(0); len(got) != 1 || len(got[0]) != 3 {
		t.Errorf("3 recipients: %v", got)
	}
}

// An id is shown in terminals (relay dlq list and show), logs and
// headers: control sequences in it are refused, wherever it came from.
func TestValidateRefusesControlCharactersInID(t *testing.T) {
	for _, id := range []string{
		"\x1b[2J\x1b]0;pwned\x07", // clear the screen, retitle the window
		"a\tb", "bell\x07", "del\x7f", "csi\u009b2J", "nel\u0085", "rtl\u202eevil", "bad\xffutf8",
		"crlf\r\nX: y", "nul\x00",
	} {
		m := valid()
		m.ID = id
		err := m.Validate()
		inv, ok := err.(*Invalid)
		if !ok || inv.Field != "id" {
			t.Errorf("id %q: %v, want it refused", id, err)
			continue
		}
		if strings.ContainsAny(err.Error(), "\x1b\x07\x7f\t\r\n\x00") || strings.Contains(err.Error(), "\u009b") {
			t.Errorf("id %q: the error quotes it raw: %q", id, err)
		}
	}
	for _, id := range []string{"alert-7f3a", "a b", `C:\x`, "ünïcödé-42", "seq-17:replay:3"} {
		m := valid()
		m.ID = id
		if err := m.Validate(); err != nil {
			t.Errorf("id %q: %v", id, err)
		}
	}
}

func TestValidateFillsID(t *testing.T) {
	m := valid()
	m.ID = ""
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(m.ID) != 32 {
		t.Fatalf("generated id %q", m.ID)
	}
}

func TestDecode(t *testing.T) {
	if _, err := Decode([]byte(`{"to":["a@b.com"]`)); !IsInvalid(err) {
		t.Fatalf("truncated JSON: %v", err)
	}
	// Unknown fields are ignored and named, not refused: a producer on a
	// newer schema must not lose alerts.
	m, err := Decode([]byte(`{"account":"a","To":["x@y.com"],"subjet":"typo","x-team":"ops","attachments":[{"filename":"f","data":"aGk=","inline":true}]}`))
	if err != nil || strings.Join(m.Unknown, ",") != "attachments[].inline,subjet,x-team" || len(m.To) != 1 {
		t.Fatalf("unknown fields: %+v %v", m, err)
	}
	if b, _ := m.Encode(); strings.Contains(string(b), "subjet") || strings.Contains(string(b), "nknown") {
		t.Fatalf("unknown field names encoded: %s", b)
	}
	if _, err := Decode([]byte(`{} {}`)); !IsInvalid(err) {
		t.Fatalf("trailing data: %v", err)
	}
	m, err = Decode([]byte(`{"account":"a","to":["x@y.com"],"attachments":[{"filename":"f","data":"aGk="}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Attachments[0].Data) != "hi" {
		t.Fatalf("attachment data %q", m.Attachments[0].Data)
	}
}

func TestRecipientsDedupe(t *testing.T) {
	m := &Message{To: []string{"A <a@x.com>", "b@x.com"}, Cc: []string{"a@X.com"}, Bcc: []string{"c@x.com"}}
	got, err := m.Recipients()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a@x.com,b@x.com,c@x.com" {
		t.Fatalf("recipients %v", got)
	}
}

func TestFromPolicy(t *testing.T) {
	tests := []struct {
		name      string
		from      string
		policy    FromPolicy
		sendAs    []string
		wantFrom  string
		wantReply string
		wantErr   bool
	}{
		{"empty from is the mailbox", "", PolicyRewrite, nil, "<alerts@contoso.com>", "", false},
		{"rewrite keeps name, moves address", "Ops Alerts <noreply@contoso.com>", PolicyRewrite, nil, `"Ops Alerts" <alerts@contoso.com>`, `"Ops Alerts" <noreply@contoso.com>`, false},
		{"mailbox itself passes", "Me <Alerts@contoso.com>", PolicyReject, nil, `"Me" <Alerts@contoso.com>`, "", false},
		{"allow in send-as", "noreply@contoso.com", PolicyAllow, []string{"NoReply@contoso.com"}, "<noreply@contoso.com>", "", false},
		{"allow not in send-as", "other@contoso.com", PolicyAllow, []string{"noreply@contoso.com"}, "", "", true},
		{"reject", "other@contoso.com", PolicyReject, nil, "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			m.From = tc.from
			r, err := Render(m, Sender{Mailbox: "alerts@contoso.com", Policy: tc.policy, SendAs: tc.sendAs}, time.Unix(0, 0))
			if tc.wantErr {
				if !IsInvalid(err) {
					t.Fatalf("want Invalid, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.MailFrom != "alerts@contoso.com" {
				t.Fatalf("MAIL FROM %q", r.MailFrom)
			}
			msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
			if err != nil {
				t.Fatal(err)
			}
			if got := msg.Header.Get("From"); got != tc.wantFrom {
				t.Fatalf("From %q, want %q", got, tc.wantFrom)
			}
			if got := msg.Header.Get("Reply-To"); got != tc.wantReply {
				t.Fatalf("Reply-To %q, want %q", got, tc.wantReply)
			}
		})
	}
}

func TestRenderGolden(t *testing.T) {
	tests := map[string]*Message{
		"text": valid(),
		"alternative_utf8": {ID: "m2", Account: "alerts", From: "Équipe Ops <noreply@contoso.com>",
			To: []string{"Zoë <zoe@contoso.com>"}, Cc: []string{"cc@contoso.com"}, Bcc: []string{"hidden@contoso.com"},
			Subject: "Température élevée sur web-3", Text: "Température: 92°C\nline two", HTML: "<p>92&deg;C</p>",
			Headers: map[string]string{"X-Alert-Id": "7f3a", "X-Note": "naïve"}},
		"attachments": {ID: "m3", Account: "alerts", To: []string{"ops@contoso.com"}, Subject: "graph",
			Text: "see graph", Attachments: []Attachment{
				{Filename: "graph.png", ContentType: "image/png", Data: bytes.Repeat([]byte{0, 1, 2, 250}, 40)},
				{Filename: "résumé.txt", Data: []byte("hello")},
			}},
	}
	for name, m := range tests {
		t.Run(name, func(t *testing.T) {
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(r.Data, []byte("hidden@contoso.com")) {
				t.Fatal("Bcc recipient leaked into the headers")
			}
			if bytes.Contains(bytes.ReplaceAll(r.Data, []byte("\r\n"), nil), []byte("\n")) {
				t.Fatal("bare LF in rendered message")
			}
			msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
			if err != nil {
				t.Fatalf("rendered message does not parse: %v", err)
			}
			subj, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
			if err != nil || subj != m.Subject {
				t.Fatalf("subject round trip %q, %v", subj, err)
			}
			golden := filepath.Join("testdata", name+".eml")
			if *update {
				os.WriteFile(golden, r.Data, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update once)", err)
			}
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("rendered message differs from %s:\n%s", golden, r.Data)
			}
		})
	}
}

func TestMessageIDStable(t *testing.T) {
	a := MessageID("alerts", "x", "alerts@contoso.com")
	if a != MessageID("alerts", "x", "alerts@contoso.com") || a == MessageID("alerts", "y", "alerts@contoso.com") {
		t.Fatal("Message-ID must be a function of account and id")
	}
	if !strings.HasSuffix(a, "@contoso.com>") {
		t.Fatalf("Message-ID %s", a)
	}
}

func FuzzDecodeValidateRender(f *testing.F) {
	f.Add([]byte(`{"id":"a","account":"alerts","to":["a@b.com"],"subject":"s","text":"t"}`))
	f.Add([]byte(`{"account":"a","to":["A <a@b.com>"],"html":"<p>x</p>","text":"y","headers":{"X-A":"v"}}`))
	f.Add([]byte(`{"account":"a","raw":"VG86IGFAYi5jb20NCg0KeA=="}`))
	f.Add([]byte(`{"account":"a","to":["a@b.com\r\nX: y"]}`))
	f.Add([]byte(`{"account":"a","to":["a@b.com"],"subject":"` + strings.Repeat("A", 1200) + `","headers":{"X-L":"` + strings.Repeat("h ", 600) + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		if m.Validate() != nil {
			return
		}
		r, err := Render(m, Sender{Mailbox: "alerts@contoso.com"}, time.Unix(0, 0))
		if err != nil {
			return
		}
		// No line of any rendered message passes SMTP's 998 octets
		// (RFC 5322 §2.1.1): a server other than Office 365 would refuse it.
		for _, l := range bytes.Split(r.Data, []byte("\r\n")) {
			if len(l) > 998 {
				t.Fatalf("a rendered line of %d octets: %.80q", len(l), l)
			}
		}
		if len(m.Raw) > 0 {
			return
		}
		// A valid message renders to one that parses, whose headers have
		// no line a producer injected.
		msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
		if err != nil {
			t.Fatalf("rendered message does not parse: %v\n%q", err, r.Data)
		}
		if msg.Header.Get("Bcc") != "" {
			t.Fatalf("Bcc header injected: %q", r.Data)
		}
	})
}

// A non-ASCII display name with an RFC 5322 special in it must come out
// as an encoded-word a reader can parse (RFC 2047 §5(3)); net/mail's own
// Address.String gets this wrong.
func TestDisplayNameEncodingReadsBack(t *testing.T) {
	for _, in := range []string{
		`"\\°" <a@contoso.com>`,
		"a@contoso.com (\x0f\\\\)", // a comment stands for the name
		`"°\\" <"a..b"@contoso.com>`,
		`"Jörg, Ops" <a@contoso.com>`,
		`"Jörg \"J\" (ops)" <a@contoso.com>`,
		`Jörg <a@contoso.com>`,
		`"Ops, Team" <a@contoso.com>`,
	} {
		want, err := mail.ParseAddress(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		got, err := mail.ParseAddress(formatAddress(want))
		if err != nil {
			t.Fatalf("%q formatted as %q does not parse: %v", in, formatAddress(want), err)
		}
		if got.Name != want.Name || got.Address != want.Address {
			t.Errorf("%q formatted as %q reads back as %q <%s>", in, formatAddress(want), got.Name, got.Address)
		}
	}
}
