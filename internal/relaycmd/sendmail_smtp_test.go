package relaycmd

import (
	"reflect"
	"strings"
	"testing"

	"relay365/internal/message"
	"relay365/internal/queue/queuetest"
)

// replyCodes are the codes of the SMTP replies in out, one per reply
// (the last line of a multi-line one).
func replyCodes(out string) []string {
	var codes []string
	for _, line := range strings.Split(out, "\r\n") {
		if len(line) >= 4 && line[3] == ' ' {
			codes = append(codes, line[:3])
		}
	}
	return codes
}

// TestSendmailSMTP: -bs, as SwiftMailer, Symfony Mailer ("sendmail
// -bs") and Laravel ("sendmail -bs -i") run it by default: an SMTP
// session on stdin and stdout (sendmail(8), Postfix sendmail(1)), each
// message queued as relay sendmail queues one, and answered with what
// its exit code would have said.
func TestSendmailSMTP(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	good := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_DOMAIN": "contoso.com"}
	down := map[string]string{"RELAY_NATS_URL": "nats://127.0.0.1:1", "RELAY_ACCOUNT": "alerts"}
	msg := "From: App <app@contoso.com>\r\nSubject: hi\r\n\r\n..dot-stuffed\r\nbody\r\n.\r\n"
	tests := []struct {
		name    string
		vars    map[string]string
		args    []string
		session string
		codes   []string
		to      [][]string // the recipients of each message queued
	}{
		{"Symfony Mailer", good, []string{"-bs"},
			"EHLO [127.0.0.1]\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nRCPT TO:<dev@contoso.com>\r\nDATA\r\n" + msg + "QUIT\r\n",
			[]string{"220", "250", "250", "250", "250", "354", "250", "221"}, [][]string{{"ops@contoso.com", "dev@contoso.com"}}},
		{"Laravel, two messages, one refused", good, []string{"-bs", "-i"},
			"EHLO web-3\r\nMAIL FROM:<>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n" + msg +
				"RSET\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nFrom: <<<\r\n\r\nx\r\n.\r\n" +
				"MAIL FROM:<app@contoso.com>\r\nRCPT TO:<audit@contoso.com>\r\nDATA\r\n" + msg + "QUIT\r\n",
			[]string{"220", "250", "250", "250", "354", "250", "250", "250", "250", "354", "554", "250", "250", "354", "250", "221"},
			[][]string{{"ops@contoso.com"}, {"audit@contoso.com"}}},
		{"a body line longer than 2000 octets", good, []string{"-bs"},
			"EHLO web-3\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: report\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n" + strings.TrimPrefix(msg, "From: App <app@contoso.com>\r\nSubject: hi\r\n\r\n") + "QUIT\r\n",
			[]string{"220", "250", "250", "250", "354", "250", "221"}, [][]string{{"ops@contoso.com"}}},
		{"no QUIT: the end of the input ends it", good, []string{"-bs"},
			"HELO web-3\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n" + msg,
			[]string{"220", "250", "250", "250", "354", "250"}, [][]string{{"ops@contoso.com"}}},
		{"NATS down, no spool: try again later", down, []string{"-bs"},
			"EHLO web-3\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n" + msg + "QUIT\r\n",
			[]string{"220", "250", "250", "250", "354", "451", "221"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := mailCount(t, ctx, env.JS)
			r := run(t, tt.vars, tt.session, append([]string{"sendmail"}, tt.args...)...)
			if r.code != 0 || !reflect.DeepEqual(replyCodes(r.stdout), tt.codes) {
				t.Fatalf("exit %d, replies %v, want 0 and %v\n%s\nstderr %q", r.code, replyCodes(r.stdout), tt.codes, r.stdout, r.stderr)
			}
			if got := mailCount(t, ctx, env.JS) - n; got != uint64(len(tt.to)) {
				t.Fatalf("%d messages queued, want %d", got, len(tt.to))
			}
			for i, to := range tt.to {
				_, m := queued(t, ctx, env.JS, n+uint64(i)+1)
				if !reflect.DeepEqual(m.To, to) || !strings.HasSuffix(string(m.Raw), "\r\n.dot-stuffed\r\nbody\r\n") {
					t.Fatalf("message %d: To %v, want %v; raw %q", i, m.To, to, m.Raw)
				}
			}
		})
	}
}

// TestSendmailSMTPTooLarge: over -bs, a message over the account's size
// limit is answered 552 5.3.4, the reply RFC 5321 §4.5.3.1.10 gives for
// a message too large ("552 ... exceeded storage allocation") with RFC
// 3463's "message too big for system", not 554 5.6.0 (a message the
// relay cannot read): a client keeps them apart, and may send it
// smaller. Nothing is queued, and the session goes on.
func TestSendmailSMTPTooLarge(t *testing.T) {
	env, ctx := startSmallAccount(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "small"}
	long := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 128) // 8 KiB
	session := "EHLO web-3\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: big\r\n\r\n" + long + ".\r\n" +
		"MAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: small\r\n\r\nok\r\n.\r\nQUIT\r\n"
	r := run(t, vars, session, "sendmail", "-bs")
	want := []string{"220", "250", "250", "250", "354", "552", "250", "250", "354", "250", "221"}
	if r.code != 0 || !reflect.DeepEqual(replyCodes(r.stdout), want) || !strings.Contains(r.stdout, "552 5.3.4 ") {
		t.Fatalf("exit %d, replies %v, want 0 and %v\n%s", r.code, replyCodes(r.stdout), want, r.stdout)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
}

// TestSendmailSMTPTooLargeOnceRendered: over -bs, a message that go-smtp
// takes (up to 35 MB) but that passes Office 365's 35 MB only once the
// relay adds the Date and Message-ID fields it lacks is too large too:
// 552 5.3.4 (RFC 3463 §3.4, "message too big for system"), as a message
// over SIZE or the account's limit, not 554 5.6.0, which says the relay
// cannot read it. Nothing is queued, and the session goes on.
func TestSendmailSMTPTooLargeOnceRendered(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
	head := "From: App <app@contoso.com>\r\nSubject: big\r\n\r\n"
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	var b strings.Builder
	b.WriteString("EHLO web-3\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n" + head)
	size := len(head)
	for size+len(line) <= message.MaxSize-50 { // room for none of the fields the relay adds
		b.WriteString(line)
		size += len(line)
	}
	b.WriteString(".\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: small\r\n\r\nok\r\n.\r\nQUIT\r\n")
	r := run(t, vars, b.String(), "sendmail", "-bs")
	want := []string{"220", "250", "250", "250", "354", "552", "250", "250", "354", "250", "221"}
	if r.code != 0 || !reflect.DeepEqual(replyCodes(r.stdout), want) || !strings.Contains(r.stdout, "552 5.3.4 ") {
		t.Fatalf("a message of %d bytes: exit %d, replies %v, want 0 and %v\n%s", size, r.code, replyCodes(r.stdout), want, r.stdout)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
}
