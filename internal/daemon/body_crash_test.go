//go:build crash

package daemon_test

// The large-body crash windows (docs/design.md §3.5, internal/body): a
// message over message.InlineMax has its content stored in relay_bodies
// before the MAIL message that names it is published, and the body is
// deleted only after that message is acked. `relay serve`, built with the
// crash points (internal/crashpoint), kills itself with SIGKILL inside
// each window:
//
//   - the SMTP front door, body stored and MAIL not yet published: the
//     client gets no reply and sends again; the message arrives once,
//     and the body of the killed attempt, which nothing names, is swept;
//   - a worker, ack confirmed and body not yet deleted: the message is
//     not sent again, and its body is swept.
//
// The sweeper deletes only bodies older than --body-orphan-age, which may
// not be shorter than MAIL's duplicate window: the tests shorten the
// queue lifetime to shorten that window, and so take a minute and a half
// each, run in parallel.
//
//	go test -tags crash -run TestCrashBody -v ./internal/daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/body"
	"relay365/internal/crashpoint"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/testutil"
	"relay365/producer"
)

// bodyCrashLifetime is the queue lifetime of these tests: short, so
// that MAIL's duplicate window, the shortest orphan age, is (80s), yet
// twice the shortest allowed, so that no message expires on a loaded
// machine before it is sent.
const bodyCrashLifetime = 20 * time.Second

// bodyCrashFlags are the serve flags of every run: a short queue
// lifetime, the shortest orphan age it allows, a sweep every second.
func bodyCrashFlags() []string {
	return []string{"--queue-lifetime", bodyCrashLifetime.String(),
		"--body-orphan-age", queue.DuplicatesFor(bodyCrashLifetime).String(), "--body-sweep-every", "1s"}
}

func TestCrashBodyStoredNotPublished(t *testing.T) {
	t.Parallel()
	const (
		mailbox  = "bodies@contoso.com"
		producer = "crash-mta"
		password = "crash test producer password"
		subject  = "large report, crashed at the front door"
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rig := startCrashRig(t, ctx, "bodies", mailbox, 2, "crashpoints")
	prods, err := ingress.OpenProducers(ctx, rig.env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prods.Put(ctx, producer, []string{"bodies"}, password); err != nil {
		t.Fatal(err)
	}
	store, err := body.Open(ctx, rig.env.JS)
	if err != nil {
		t.Fatal(err)
	}

	attachment := randomBytes(3 << 20)
	text := "The report is attached.\r\n"
	msg := mtaMessage{from: mailbox, to: "ops@fabrikam.com", subject: subject,
		data: mimeMessage(mailbox, "ops@fabrikam.com", subject, text, "report.bin", attachment)}
	if len(msg.data) <= message.InlineMax {
		t.Fatalf("the message is %d bytes, not over message.InlineMax", len(msg.data))
	}

	addr := testutil.FreeAddr(t)
	flags := append([]string{"--smtp-listen", addr}, bodyCrashFlags()...)
	rig.serveCrashing(crashpoint.IngressBodyStored, flags...)
	m := &mta{addr: addr, tls: rig.smtpTLS(addr), user: producer, password: password}
	defer m.close()
	if err := m.connect(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, err = m.transaction(ctx, msg, 0, nil)
	switch {
	case err == nil:
		t.Fatal("the relay killed between storing the body and publishing answered the DATA with 250")
	case errors.As(err, new(*smtp.SMTPError)):
		t.Fatalf("the relay killed between storing the body and publishing gave an SMTP reply: %v", err)
	}
	rig.waitKilled()
	m.close()

	// Killed inside the window: the body stored, nothing published.
	orphans := bodyNames(t, ctx, store)
	if len(orphans) != 1 || !rig.mailDrained() {
		t.Fatalf("after the kill: bodies %v, MAIL empty %v; want one body and nothing queued", orphans, rig.mailDrained())
	}

	// The client sends again, as an MTA does with a message that got no
	// reply, once the relay is back.
	rig.serve(flags...)
	tally := newMTATally(1)
	if err := m.submit(ctx, msg, 0, tally, nil); err != nil {
		t.Fatalf("resubmission: %v", err)
	}
	if _, err := rig.fake.WaitMessages(ctx, rig.base+1); err != nil {
		t.Fatal(err)
	}

	// Both bodies go: the delivered one after its ack, the orphan once
	// older than the orphan age. Waiting for the orphan also gives a
	// second delivery all the time it could want.
	testutil.Eventually(t, ctx, "the bucket to empty: the sent body deleted, the orphan swept", func() bool {
		return len(bodyNames(t, ctx, store)) == 0
	})
	rig.stop()

	checkDeliveredOnce(t, ctx, rig, subject, text, "report.bin", attachment)
	if tally.resubmitted(0) != 0 || tally.acked.Load() != 1 {
		t.Errorf("the resubmission took %d tries and %d 250s, want one of each", tally.resubmitted(0)+1, tally.acked.Load())
	}
	fmt.Printf("crash test: front door killed with the body stored and unpublished: %d-byte message sent again, delivered once, orphan %s swept\n",
		len(msg.data), orphans[0])
}

func TestCrashBodyAckedNotDeleted(t *testing.T) {
	t.Parallel()
	const (
		mailbox = "bodies@contoso.com"
		subject = "large report, crashed after the ack"
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rig := startCrashRig(t, ctx, "bodies", mailbox, 2, "crashpoints")
	store, err := body.Open(ctx, rig.env.JS)
	if err != nil {
		t.Fatal(err)
	}

	attachment := randomBytes(3 << 20)
	text := "The report is attached.\r\n"
	p, err := producer.New(rig.env.NC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, &producer.Message{ID: "body-crash-1", Account: "bodies", To: []string{"ops@fabrikam.com"},
		Subject: subject, Text: text, Attachments: []producer.Attachment{{Filename: "report.bin", ContentType: "application/octet-stream", Data: attachment}}}); err != nil {
		t.Fatal(err)
	}
	stored := bodyNames(t, ctx, store)
	if len(stored) != 1 {
		t.Fatalf("bodies after the publish: %v, want one (the message is over message.InlineMax)", stored)
	}

	flags := bodyCrashFlags()
	rig.serveCrashing(crashpoint.WorkerAcked, flags...)
	rig.waitKilled()

	// Killed inside the window: sent, acked (MAIL is empty), the body
	// still there.
	seen, total := rig.delivered()
	if total != 1 || seen[subject] != 1 || !rig.mailDrained() {
		t.Fatalf("after the kill: %d delivered (%v), MAIL empty %v; want it sent once and acked", total, seen, rig.mailDrained())
	}
	if names := bodyNames(t, ctx, store); len(names) != 1 || names[0] != stored[0] {
		t.Fatalf("after the kill: bodies %v, want %s, not yet deleted", names, stored[0])
	}

	// The message was acked before the kill, so the restarted relay has
	// nothing to send: it is delivered exactly once, never again. The
	// body, named by nothing, is swept once older than the orphan age,
	// by which time a redelivery would long have come (--ack-wait 2s).
	rig.serve(flags...)
	testutil.Eventually(t, ctx, "the acked message's body to be swept", func() bool {
		return len(bodyNames(t, ctx, store)) == 0
	})
	rig.stop()

	checkDeliveredOnce(t, ctx, rig, subject, text, "report.bin", attachment)
	fmt.Printf("crash test: worker killed after the ack, before deleting the body: delivered once, not again; body %s swept\n", stored[0])
}

// checkDeliveredOnce asserts that the fake Office 365 received exactly
// one message since the rig's start, with subject, whose text part is
// text and whose attachment filename decodes to attachment; and that
// nothing is left in MAIL or dead-lettered.
func checkDeliveredOnce(t *testing.T, ctx context.Context, rig *crashRig, subject, text, filename string, attachment []byte) {
	t.Helper()
	seen, total := rig.delivered()
	if total != 1 || seen[subject] != 1 {
		t.Fatalf("delivered %d messages (%v), want %q exactly once", total, seen, subject)
	}
	if !rig.mailDrained() {
		t.Error("MAIL still holds messages")
	}
	dead, err := queue.ListDeadLetters(ctx, rig.env.JS, queue.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range dead {
		t.Errorf("dead-lettered: %s (%s)", e.ID, e.Reason)
	}
	gotText, gotAttachment := mimeParts(t, rig.fake.Messages()[rig.base].Data, filename)
	if strings.TrimRight(gotText, "\r\n") != strings.TrimRight(text, "\r\n") {
		t.Errorf("delivered text part %q, want %q", gotText, text)
	}
	if !bytes.Equal(gotAttachment, attachment) {
		t.Errorf("delivered attachment %s: %d bytes, not the %d submitted", filename, len(gotAttachment), len(attachment))
	}
}

// bodyNames lists every body in the bucket.
func bodyNames(t *testing.T, ctx context.Context, store *body.Store) []string {
	t.Helper()
	names, err := store.Names(ctx, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// randomBytes is n bytes no compression or encoding shortcut shrinks.
func randomBytes(n int) []byte {
	rng := rand.NewChaCha8([32]byte{'b', 'o', 'd', 'y'})
	b := make([]byte, n)
	rng.Read(b)
	return b
}

// mimeMessage is a multipart/mixed message (RFC 2046 §5.1.3) as an MTA
// submits it: a text part and a base64 attachment (RFC 2045 §6.8) in
// lines of 76 characters.
func mimeMessage(from, to, subject, text, filename string, attachment []byte) []byte {
	const boundary = "crash-test-boundary-7f3a"
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Reports <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-Id: <body-crash@mta.crash.test>\r\nDate: %s\r\n",
		from, to, subject, time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=%q\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s", boundary, text)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=%q\r\n\r\n", boundary, filename)
	enc := base64.StdEncoding.EncodeToString(attachment)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

// mimeParts reads a delivered multipart/mixed message: its first
// text/plain part and the decoded content of the part named filename.
func mimeParts(t *testing.T, data []byte, filename string) (text string, attachment []byte) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("delivered message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("delivered Content-Type %q (%v), want multipart/mixed", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	found := false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("delivered message's parts: %v", err)
		}
		content, err := io.ReadAll(part)
		if err != nil {
			t.Fatalf("delivered part: %v", err)
		}
		ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		switch {
		case part.FileName() == filename:
			if enc := part.Header.Get("Content-Transfer-Encoding"); !strings.EqualFold(enc, "base64") {
				t.Fatalf("attachment %s has Content-Transfer-Encoding %q, want base64", filename, enc)
			}
			if attachment, err = base64.StdEncoding.DecodeString(string(content)); err != nil {
				t.Fatalf("attachment %s: %v", filename, err)
			}
			found = true
		case ct == "text/plain" && text == "":
			text = string(content)
		}
	}
	if !found {
		t.Fatalf("the delivered message has no part named %s", filename)
	}
	return text, attachment
}
