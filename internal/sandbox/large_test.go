package sandbox_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"strings"
	"testing"
	"time"

	"relay365/internal/body"
	"relay365/internal/sandbox"
	"relay365/internal/testutil"
	"relay365/producer"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// A 30 MB message with attachments goes through the whole relay (a
// producer with its own permissions, the body store, the worker's
// streamed DATA, the fake Office 365 over STARTTLS) and every attachment
// comes out byte-identical; its body is deleted once the message is
// acked. A 36 MB one is refused at publish with the size and the limit,
// and nothing is queued or left stored.
func TestLargeMessageByteIdentical(t *testing.T) {
	s, _ := start(t, t.TempDir())
	ctx := largeCtx(t)
	_, js, p := connect(t, s)

	files := map[string][]byte{"report.pdf": make([]byte, 15<<20), "logs.tar.gz": make([]byte, 7<<20)}
	for _, b := range files {
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
	}
	m := &producer.Message{ID: "big-1", Account: sandbox.Account, To: []string{"ops@contoso.com"}, Bcc: []string{"audit@contoso.com"},
		From: "Grafana <grafana@example.org>", Subject: "weekly report", Text: "attached",
		Attachments: []producer.Attachment{
			{Filename: "report.pdf", ContentType: "application/pdf", Data: files["report.pdf"]},
			{Filename: "logs.tar.gz", Data: files["logs.tar.gz"]},
		}}
	if _, err := p.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	before := len(s.Fake.Messages()) // the consent's test mail
	got, err := s.Fake.WaitMessages(ctx, before+1)
	if err != nil {
		t.Fatal(err)
	}
	d := got[before]
	if len(d.Data) < 29<<20 {
		t.Fatalf("delivered %d bytes, want about 30 MB", len(d.Data))
	}
	if strings.Join(d.To, ",") != "ops@contoso.com,audit@contoso.com" {
		t.Errorf("envelope %v", d.To)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(d.Data))
	if err != nil {
		t.Fatal(err)
	}
	if from := msg.Header.Get("From"); !strings.Contains(from, sandbox.Mailbox) || !strings.Contains(msg.Header.Get("Reply-To"), "grafana@example.org") {
		t.Errorf("From %q Reply-To %q: the From policy did not apply", from, msg.Header.Get("Reply-To"))
	}
	if msg.Header.Get("Bcc") != "" || msg.Header.Get("Message-Id") == "" || msg.Header.Get("Date") == "" {
		t.Errorf("headers: Bcc %q Message-ID %q Date %q", msg.Header.Get("Bcc"), msg.Header.Get("Message-Id"), msg.Header.Get("Date"))
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	seen := 0
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want, ok := files[part.FileName()]
		if !ok {
			continue
		}
		data, err := io.ReadAll(part) // multipart decodes nothing: base64 by hand
		if err != nil {
			t.Fatal(err)
		}
		dec, err := decodeBase64Lines(data)
		if err != nil || !bytes.Equal(dec, want) {
			t.Errorf("%s: %d bytes after decoding (%v), want the %d sent, byte-identical", part.FileName(), len(dec), err, len(want))
		}
		seen++
	}
	if seen != 2 {
		t.Fatalf("found %d of 2 attachments", seen)
	}
	waitIdle(t, ctx, js)
	store, err := body.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the sent message's body to be deleted", func() bool {
		names, err := store.Names(ctx, time.Now().Add(time.Hour))
		return err == nil && len(names) == 0
	})

	// 36 MB: refused before anything is queued.
	m2 := &producer.Message{ID: "big-2", Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "too big",
		Attachments: []producer.Attachment{{Filename: "huge.bin", Data: make([]byte, 27<<20)}}} // 36 MB in base64
	_, err = p.Publish(ctx, m2)
	var tl *producer.TooLarge
	if !errors.As(err, &tl) || tl.Limit != 35<<20 || !strings.Contains(err.Error(), "over the size limit of 36700160 bytes") {
		t.Fatalf("36 MB: %v, want a TooLarge naming the size and the 35 MB limit", err)
	}
	if names, _ := store.Names(ctx, time.Now().Add(time.Hour)); len(names) != 0 {
		t.Errorf("the refused message left bodies %v", names)
	}
	if n := len(s.Fake.Messages()); n != before+1 {
		t.Errorf("%d messages delivered, want %d", n, before+1)
	}
}

func decodeBase64Lines(b []byte) ([]byte, error) {
	return io.ReadAll(base64Decoder(bytes.NewReader(bytes.ReplaceAll(b, []byte("\r\n"), nil))))
}

func base64Decoder(r io.Reader) io.Reader { return base64.NewDecoder(base64.StdEncoding, r) }

// A 16 MB message submitted over SMTP (go-smtp's client, STARTTLS, AUTH
// PLAIN) is too large for a NATS message and for the session's buffer:
// the front door streams it into the body store and the relay delivers it
// unchanged; 36 MB of lines with no header section gets 552, the size
// told before the missing header.
func TestLargeSMTPSubmission(t *testing.T) {
	s, _ := start(t, t.TempDir())
	ctx := largeCtx(t)
	_, js, _ := connect(t, s)
	pem, err := os.ReadFile(s.Daemon.SMTPCAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	dial := func() *smtp.Client {
		c, err := smtp.DialStartTLS(s.Daemon.Ingress.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Auth(sasl.NewPlainClient("", sandbox.Producer, s.SMTPPassword)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	bin := make([]byte, 12<<20)
	rand.Read(bin)
	var b strings.Builder
	b.WriteString("From: Grafana <grafana@example.org>\r\nTo: ops@contoso.com\r\nSubject: big over SMTP\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(bin)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	if err := dial().SendMail("grafana@example.org", []string{"ops@contoso.com"}, strings.NewReader(b.String())); err != nil {
		t.Fatalf("submission: %v", err)
	}
	var got []byte
	testutil.Eventually(t, ctx, "the large message at the fake Office 365", func() bool {
		for _, m := range s.Fake.Messages() {
			if m.Subject == "big over SMTP" {
				got = m.Data
				return true
			}
		}
		return false
	})
	msg, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	dec, err := decodeBase64Lines(mustReadAll(t, msg.Body))
	if err != nil || !bytes.Equal(dec, bin) {
		t.Fatalf("delivered body decodes to %d bytes (%v), want the %d sent", len(dec), err, len(bin))
	}
	waitIdle(t, ctx, js)

	err = dial().SendMail("grafana@example.org", []string{"ops@contoso.com"}, io.LimitReader(zeroLines{}, 36<<20))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 {
		t.Fatalf("36 MB: %v, want 552", err)
	}
	store, err := body.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	// The delivered message's body is deleted after its ack; the refused
	// one's was never kept.
	testutil.Eventually(t, ctx, "an empty body store", func() bool {
		names, err := store.Names(ctx, time.Now().Add(time.Hour))
		return err == nil && len(names) == 0
	})
}

func mustReadAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// zeroLines is an endless message body of short lines.
type zeroLines struct{}

func (zeroLines) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
		if i%70 == 69 {
			p[i] = '\n'
		}
	}
	return len(p), nil
}
