package ingress_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/ingress"
	"relay365/internal/message"
)

// bigMail is a message from from with an attachment of att, base64 in
// lines of 76 (RFC 2045 §6.8).
func bigMail(from, subject string, att []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: ops@contoso.com\r\nSubject: %s\r\nDate: Sat, 05 Dec 2026 09:30:00 +0000\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"+
		"--b1\r\nContent-Type: text/plain\r\n\r\nThe dump is attached.\r\n"+
		"--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"dump.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
		from, subject)
	enc := base64.StdEncoding.EncodeToString(att)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--b1--\r\n")
	return b.String()
}

// paddedMail is a plain message from from whose body is exactly n octets.
func paddedMail(from string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: ops@contoso.com\r\nSubject: padded\r\nDate: Sat, 05 Dec 2026 09:30:00 +0000\r\n\r\n", from)
	line := strings.Repeat("y", 74) + "\r\n"
	full, r := n/len(line), n%len(line)
	for i := range full {
		if i == full-1 && r == 1 { // no line of one octet: the last is one longer
			b.WriteString("y" + line)
			return b.String()
		}
		b.WriteString(line)
	}
	if r >= 2 {
		b.WriteString(strings.Repeat("y", r-2) + "\r\n")
	}
	return b.String()
}

// addProducer registers account a and a producer that may use it alone.
func (f *frontDoor) addProducer(a account.Account, producer, password string) {
	f.t.Helper()
	a.Normalize()
	if err := f.accounts.Put(f.ctx, a); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.prods.Put(f.ctx, producer, []string{a.Alias}, password); err != nil {
		f.t.Fatal(err)
	}
}

// bodies lists the objects in the body store.
func (f *frontDoor) bodies() []string {
	f.t.Helper()
	store, err := body.Open(f.ctx, f.env.JS)
	if err != nil {
		f.t.Fatal(err)
	}
	names, err := store.Names(f.ctx, time.Now().Add(time.Hour))
	if err != nil {
		f.t.Fatal(err)
	}
	return names
}

// sent is the size in octets of the queued message q as the worker will
// send it through account a: for a stored body, the worker's own steps
// (message.ReadHeaderSection, message.RenderBody, Rendered.Size).
func (f *frontDoor) sent(q jetstream.RawStreamMsg, a account.Account) (*message.Message, []byte, int64) {
	f.t.Helper()
	m, err := message.Decode(q.Data)
	if err != nil {
		f.t.Fatal(err)
	}
	s := message.Sender{Mailbox: a.Mailbox, Policy: a.FromPolicy, SendAs: a.SendAs}
	if m.Body == nil {
		r, err := message.Render(m, s, f.clock.Now())
		if err != nil {
			f.t.Fatal(err)
		}
		return m, m.Raw, r.Size()
	}
	store, err := body.Open(f.ctx, f.env.JS)
	if err != nil {
		f.t.Fatal(err)
	}
	rc, err := store.Open(f.ctx, *m.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rc.Close()
	stored, err := io.ReadAll(rc)
	if err != nil {
		f.t.Fatal(err)
	}
	head, err := message.ReadHeaderSection(bytes.NewReader(stored))
	if err != nil {
		f.t.Fatal(err)
	}
	r, err := message.RenderBody(m, s, f.clock.Now(), head)
	if err != nil {
		f.t.Fatal(err)
	}
	return m, stored, r.Size()
}

// TestLargeSubmissionIsStreamedIntoTheBodyStore: a 6 MB message with an
// attachment, over STARTTLS, is stored as the client sent it behind the
// Received field, and the MAIL message names it with the envelope.
func TestLargeSubmissionIsStreamedIntoTheBodyStore(t *testing.T) {
	f := startFrontDoor(t, nil)
	att := make([]byte, 6<<20)
	rand.Read(att)
	mail := bigMail("alerts@contoso.com", "core dump", att)
	c := f.login("alertmanager", alertsPassword)
	if err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, mail); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	q := f.queued()
	if len(q) != 1 {
		t.Fatalf("%d messages queued, want 1", len(q))
	}
	a, _ := f.accounts.Get(f.ctx, "alerts")
	m, stored, size := f.sent(q[0], a)
	if m.Body == nil || m.Account != "alerts" || len(m.To) != 1 || m.To[0] != "ops@contoso.com" {
		t.Fatalf("queued %+v, want a body reference for alerts to ops@contoso.com", m)
	}
	trace, rest, ok := bytes.Cut(stored, []byte(mail))
	if !ok || len(rest) != 0 || !bytes.HasPrefix(trace, []byte("Received: from ")) || !bytes.Contains(trace, []byte("by relay.test (Relay365) with ESMTPSA id "+m.ID)) {
		t.Fatalf("stored body is not the Received field and the message as sent: %d bytes, starting %q", len(stored), stored[:min(len(stored), 200)])
	}
	if size > a.SizeLimit() || size < int64(len(stored)) {
		t.Fatalf("the worker would send %d bytes of a %d-byte body (limit %d)", size, len(stored), a.SizeLimit())
	}
	if n := ingressCount(t, f.reg, "alertmanager", "accepted"); n != 1 {
		t.Fatalf("accepted = %v, want 1", n)
	}
}

// TestAccountSizeLimit: a message is held to its account's
// max_message_bytes counted as the worker will send it: one that renders
// to exactly the limit is queued, one octet more is refused with 552
// 5.3.4 naming the size and the limit, and leaves nothing queued or
// stored. Both ways in: streamed (a limit of 1 MiB, past the session's
// buffer) and whole (50 kB, inline).
func TestAccountSizeLimit(t *testing.T) {
	f := startFrontDoor(t, nil)
	for _, tc := range []struct {
		alias  string
		limit  int64
		first  int // the first message's body
		stored bool
	}{
		{"stream", 1 << 20, 900_000, true},
		{"inline", 50_000, 40_000, false},
	} {
		t.Run(tc.alias, func(t *testing.T) {
			a := account.Account{Alias: tc.alias, Mailbox: tc.alias + "@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", MaxMessageBytes: tc.limit}
			f.addProducer(a, "p-"+tc.alias, otherPassword)
			a, _ = f.accounts.Get(f.ctx, tc.alias)
			c := f.login("p-"+tc.alias, otherPassword)
			from := a.Mailbox
			queued, bodies := len(f.queued()), len(f.bodies())

			if err := send(c, from, []string{"ops@contoso.com"}, paddedMail(from, tc.first)); err != nil {
				t.Fatalf("first message: %v", err)
			}
			q := f.queued()
			m, _, size := f.sent(q[len(q)-1], a)
			if (m.Body != nil) != tc.stored {
				t.Fatalf("stored in the body store: %v, want %v", m.Body != nil, tc.stored)
			}
			// The same message, longer by what the limit leaves: exactly
			// the limit as sent.
			exact := tc.first + int(tc.limit-size)
			if err := send(c, from, []string{"ops@contoso.com"}, paddedMail(from, exact)); err != nil {
				t.Fatalf("a message of exactly the limit: %v", err)
			}
			q = f.queued()
			if _, _, size := f.sent(q[len(q)-1], a); size != tc.limit {
				t.Fatalf("the worker would send %d bytes, want exactly the limit %d", size, tc.limit)
			}
			err := send(c, from, []string{"ops@contoso.com"}, paddedMail(from, exact+1))
			wantReply(t, "one octet over", err, 552, "5.3.4")
			for _, want := range []string{fmt.Sprintf("%d bytes", tc.limit+1), fmt.Sprintf("size limit of %d bytes", tc.limit), "account " + tc.alias} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("552 reply %q does not say %q", err, want)
				}
			}
			if n := len(f.queued()); n != queued+2 {
				t.Fatalf("%d messages queued, want the %d before and 2", n, queued)
			}
			want := bodies
			if tc.stored {
				want += 2
			}
			if n := len(f.bodies()); n != want {
				t.Fatalf("%d bodies stored, want %d: the refused one left its body", n, want)
			}
			// The session goes on: the next transaction is served.
			if err := send(c, from, []string{"ops@contoso.com"}, paddedMail(from, 100)); err != nil {
				t.Fatalf("after a 552: %v", err)
			}
		})
	}
	t.Run("SIZE= over the account's limit at MAIL", func(t *testing.T) {
		c := f.login("p-stream", otherPassword)
		err := c.Mail("stream@contoso.com", &smtp.MailOptions{Size: 2 << 20})
		wantReply(t, "MAIL SIZE=2097152", err, 552, "5.3.4")
		if !strings.Contains(err.Error(), "2097152 bytes") || !strings.Contains(err.Error(), "1048576 bytes") {
			t.Fatalf("552 reply %q does not say the size and the limit", err)
		}
		// The null sender: held to the largest limit of the producer's accounts.
		wantReply(t, "MAIL FROM:<> SIZE=2097152", c.Mail("", &smtp.MailOptions{Size: 2 << 20}), 552, "5.3.4")
		if err := c.Mail("stream@contoso.com", &smtp.MailOptions{Size: 1 << 20}); err != nil {
			t.Fatalf("SIZE= at the limit: %v", err)
		}
	})
	if n := ingressCount(t, f.reg, "p-stream", "too_large") + ingressCount(t, f.reg, "p-inline", "too_large"); n != 4 {
		t.Errorf("too_large = %v, want 4", n)
	}
}

// TestHeaderSectionTooLarge: a header section that does not end within
// the session's buffer is refused with 554 5.6.0 saying so; nothing is
// queued or stored. The same header in a message over the relay's limit
// gets the 552 that tells the producer more.
func TestHeaderSectionTooLarge(t *testing.T) {
	f := startFrontDoor(t, func(c *ingress.Config) { c.MaxMessageBytes = 4 << 20 })
	var b strings.Builder
	b.WriteString("From: <alerts@contoso.com>\r\nTo: ops@contoso.com\r\nX-Labels: a")
	for b.Len() < 600<<10 {
		b.WriteString("\r\n " + strings.Repeat("l", 70))
	}
	b.WriteString("\r\n\r\nbody\r\n")
	c := f.login("alertmanager", alertsPassword)
	err := send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, b.String())
	wantReply(t, "DATA", err, 554, "5.6.0")
	if !strings.Contains(err.Error(), "header section") {
		t.Fatalf("554 reply %q does not say what to fix", err)
	}
	wantReply(t, "DATA of 5 MB", send(c, "alerts@contoso.com", []string{"ops@contoso.com"}, b.String()+strings.Repeat("x\r\n", 5<<20/3)), 552, "5.3.4")
	if n, m := len(f.queued()), len(f.bodies()); n != 0 || m != 0 {
		t.Fatalf("%d queued, %d bodies stored by refused messages", n, m)
	}
}
