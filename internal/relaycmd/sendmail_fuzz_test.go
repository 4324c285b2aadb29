package relaycmd

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"relay365/internal/cli"
	"relay365/internal/message"
)

// FuzzParseSendmail: sendmail's hand-parsed command line (args separated
// by NUL, which no argument can hold) never panics; it asks for help or
// fails with a usage error (exit 64), or yields a config the rest of the
// command may rely on: a valid account, a positive timeout, recipients
// (or -t) that are exactly the arguments after the options, and a domain
// that qualifies an address. The same arguments parse the same way twice.
func FuzzParseSendmail(f *testing.F) {
	for _, s := range []struct{ args, account string }{
		{"-FCronDaemon\x00-i\x00-B8BITMIME\x00-oem\x00root", "alerts"},
		{"-t\x00-oem\x00-i", "alerts"},
		{"-oem\x00-oi\x00--\x00ops@contoso.com", "alerts"},
		{"-fcron@web-3.contoso.com\x00-FCron Daemon\x00-Nnever\x00-Rhdrs\x00-Vid-1\x00a@contoso.com\x00b@contoso.com", "alerts"},
		{"-f\x00cron@web-3.contoso.com\x00-F\x00Cron Daemon\x00-B\x008BITMIME\x00-o\x00i\x00-bm\x00-v\x00a@contoso.com", "alerts"},
		{"-ti\x00-tf\x00cron@x\x00-ioem", "alerts"},
		{"-O\x00IgnoreDots=true\x00-OIgnoreDots= yes \x00a@b.c", "alerts"},
		{"--account=billing\x00--domain=@contoso.com\x00--timeout=5s\x00root", ""},
		{"--account\x00billing\x00--nats-url\x00nats://u:p@h:4222\x00root", ""},
		{"--domain\x00not a domain\x00root", "alerts"},
		{"--timeout=-1s\x00root", "alerts"},
		{"--timeout", "alerts"},
		{"-f", "alerts"},
		{"-bs", "alerts"},
		{"-bs\x00-i\x00root", "alerts"},
		{"-account=x\x00root", "alerts"},
		{"-h", "alerts"},
		{"--help", ""},
		{"--nope\x00root", "alerts"},
		{"-\x00root", "alerts"},
		{"\x00-t", "alerts"},
		{"root\x00-t", "alerts"},
		{"-t", "Not Valid"},
		{"", "alerts"},
		{"--\x00--\x00-t", "alerts"},
		{"--domain=\x00-t", "alerts"},
		{"-q", ""},
		{"-q\x00--spool=off", "alerts"},
		{"-q\x00root", "alerts"},
		{"-q1h", ""},
		{"-qi\x00--spool\x00/nonexistent", ""},
	} {
		f.Add(s.args, s.account)
	}
	f.Fuzz(func(t *testing.T, joined, acct string) {
		var args []string
		if joined != "" {
			args = strings.Split(joined, "\x00")
		}
		env := Env{Stderr: io.Discard, Getenv: func(k string) string {
			if k == "RELAY_ACCOUNT" {
				return acct
			}
			return ""
		}}
		c, err := parseSendmail(slices.Clone(args), env)
		c2, err2 := parseSendmail(slices.Clone(args), env)
		if (err == nil) != (err2 == nil) || err == nil && !reflect.DeepEqual(c, c2) {
			t.Fatalf("two parses differ: %+v %v / %+v %v", c, err, c2, err2)
		}
		if err != nil {
			if !errors.Is(err, flag.ErrHelp) && !cli.IsUsage(err) {
				t.Fatalf("error %v is neither help nor a usage error (exit 64)", err)
			}
			return
		}
		if c.Timeout <= 0 {
			t.Fatalf("timeout %v accepted", c.Timeout)
		}
		if c.Queue {
			// -q sends the spool: each file names its account, and no
			// recipient or message is read.
			if len(c.Rcpts) != 0 || c.Spool == "" || c.Account != "" && !message.ValidAccount(c.Account) {
				t.Fatalf("-q accepted with recipients %q, spool %q, account %q", c.Rcpts, c.Spool, c.Account)
			}
			return
		}
		if !message.ValidAccount(c.Account) {
			t.Fatalf("account %q accepted", c.Account)
		}
		if c.SMTP {
			// -bs: the recipients come with RCPT TO.
			if len(c.Rcpts) != 0 {
				t.Fatalf("-bs accepted with recipients %q", c.Rcpts)
			}
			return
		}
		if !c.FromHeader && len(c.Rcpts) == 0 {
			t.Fatal("no recipients and no -t")
		}
		// Options end at "--" or at the first recipient: the recipients
		// are the arguments' tail, unchanged.
		if len(c.Rcpts) > len(args) || !slices.Equal(c.Rcpts, args[len(args)-len(c.Rcpts):]) {
			t.Fatalf("recipients %q are not the tail of %q", c.Rcpts, args)
		}
		if len(c.Rcpts) > 0 {
			if i := len(args) - len(c.Rcpts); i > 0 && args[i-1] != "--" && len(c.Rcpts[0]) >= 2 && c.Rcpts[0][0] == '-' {
				t.Fatalf("option %q taken for a recipient in %q", c.Rcpts[0], args)
			}
		}
		if c.Domain != "" {
			if strings.HasPrefix(c.Domain, "@") {
				t.Fatalf("domain %q keeps its @", c.Domain)
			}
			if _, err := message.ParseAddress("domain", "postmaster@"+c.Domain); err != nil {
				t.Fatalf("domain %q accepted but does not qualify an address: %v", c.Domain, err)
			}
		}
	})
}

// FuzzBuildSendmail: whatever a cron job or script pipes in, with any
// recipients, -f, -F and --domain, buildSendmail either refuses it (exit
// 65) or queues a message that is CRLF throughout with no NUL, whose lines
// SMTP carries, that validates, whose recipients are distinct full
// addresses, and whose body is the input's byte for byte unless it had to
// be sent quoted-printable (docs/design.md §10).
func FuzzBuildSendmail(f *testing.F) {
	for _, s := range []struct {
		in, rcpt, sender, name, domain string
		t, i                           bool
	}{
		{"Subject: disk\n\nfull\n", "ops@contoso.com", "", "", "", false, false},
		{"disk full\n", "root", "", "", "contoso.com", false, false},
		{"From: \"(Cron Daemon)\" <root>\nTo: root\nSubject: Cron <root@web-3> run-parts\n\nout\n", "", "", "", "contoso.com", true, true},
		{"From: mdadm monitoring <root>\nTo: root, (comment) admin\nSubject: Fail event\n\nmd0\n", "", "", "", "contoso.com", true, false},
		{"From root@web-3 Mon Jan  1 00:00:00 2026\n>From x\nSubject: x\n\nbody\n.\nafter the dot\n", "ops@contoso.com", "", "", "", false, false},
		{"Subject: x\r\n\r\n.\r\n", "ops@contoso.com", "cron@web-3.contoso.com", "Cron Daemon", "", false, false},
		{"Subject: x\n\nx\n", "ops@contoso.com", "root", "Cron \"Daemon\"", "contoso.com", false, true},
		{"Subject: x\n\nx\n", "ops@contoso.com", "<>", "", "", false, false},
		{"Subject: x\n\nx\n", "ops@contoso.com", "a@b.c, d@e.f", "", "", false, false},
		{"To: a@contoso.com\nCc: A@CONTOSO.COM\nBcc:\n\nx\n", "a@contoso.com", "", "", "", true, false},
		{"Subject: x\nContent-Transfer-Encoding: 8bit\n\n" + strings.Repeat("y", 1000) + "\n", "ops@contoso.com", "", "", "", false, false},
		{"Subject: x\n\nJörg " + strings.Repeat("ü", 600) + "\n", "ops@contoso.com", "", "", "", false, false},
		{"Subject: x\nContent-Transfer-Encoding: base64\n\n" + strings.Repeat("y", 1000) + "\n", "ops@contoso.com", "", "", "", false, false},
		{"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\n" + strings.Repeat("y", 1000) + "\n--b--\n", "ops@contoso.com", "", "", "", false, false},
		{"Subject: " + strings.Repeat("s", 1200) + "\n\nx\n", "ops@contoso.com", "", "", "", false, false},
		{"Subject: x\nContent-Transfer-Encoding: 8bit\n  folded\n\n" + strings.Repeat("y", 999) + "\r", "ops@contoso.com", "", "", "", false, true},
		{"Sub ject: x\nTo: y\n\nz", "ops@contoso.com", "", "", "", false, false},
		{"\n\nbody only", "ops@contoso.com", "", "", "", false, false},
		{"", "ops@contoso.com", "", "", "", false, false},
		{"a\x00b", "ops@contoso.com", "", "", "", false, false},
		{"Subject: x\r\r\n\nx\r", "ops@contoso.com", "", "", "", false, false},
		{"From: <<<\n\nx\n", "ops@contoso.com", "", "", "", false, false},
		{"To: \"a,b\" <root>, (x,y) c\n\nx\n", "", "", "", "contoso.com", true, false},
		{"To: root\n\tfolded@\n\nx\n", "", "", "", "contoso.com", true, false},
		{"Subject: x\n\nx\n", "a b@contoso.com", "", "", "", false, false},
		{"Subject: x\n\nx\n", "", "", "", "", false, false},
	} {
		f.Add([]byte(s.in), s.rcpt, s.sender, s.name, s.domain, s.t, s.i)
	}
	f.Fuzz(func(t *testing.T, in []byte, rcpts, sender, name, domain string, fromHeader, ignoreDots bool) {
		c := sendmailConfig{Account: "alerts", Sender: sender, FullName: name, FromHeader: fromHeader, IgnoreDots: ignoreDots}
		if rcpts != "" {
			c.Rcpts = strings.Split(rcpts, "\x00")
		}
		c.Domain = strings.TrimPrefix(domain, "@")
		if c.Domain != "" {
			if _, err := message.ParseAddress("domain", "postmaster@"+c.Domain); err != nil {
				c.Domain = "" // parseSendmail refuses it
			}
		}
		data, err := readSendmail(bytes.NewReader(in), c.IgnoreDots)
		if err != nil || !bytes.HasPrefix(in, data) {
			t.Fatalf("readSendmail did not keep a prefix: %q, %v", data, err)
		}
		m, err := buildSendmail(c, slices.Clone(data))
		if err != nil {
			return // exit 65
		}
		raw := m.Raw
		if bytes.IndexByte(raw, 0) >= 0 {
			t.Fatalf("queued raw has a NUL: %q", raw)
		}
		if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) ||
			bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
			t.Fatalf("queued raw has a bare CR or LF: %q", raw)
		}
		// The worker folds a long header line where it may (RFC 5322
		// §2.2.3; buildSendmail refuses one it cannot): what must carry
		// over SMTP is the rendered message, not the queued raw.
		r, err := message.Render(m, message.Sender{Mailbox: "postmaster@relay365.invalid", Policy: message.PolicyRewrite}, time.Now())
		if err != nil {
			t.Fatalf("queued raw does not render: %v", err)
		}
		if hasLongLine(r.Data) {
			t.Fatalf("queued message renders with a line longer than %d: %q", maxLine, r.Data)
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("queued message does not validate: %v", err)
		}
		if m.Account != "alerts" || len(m.To) == 0 {
			t.Fatalf("queued %+v", m)
		}
		seen := map[string]bool{}
		for _, r := range m.To {
			a, err := message.ParseAddress("to", r)
			if err != nil || a.Address != r || !strings.Contains(r, "@") {
				t.Fatalf("recipient %q is not a full address (%v)", r, err)
			}
			if k := strings.ToLower(r); seen[k] {
				t.Fatalf("recipient %q twice in %q", r, m.To)
			}
			seen[strings.ToLower(r)] = true
		}
		// Without -t every recipient is an argument's.
		if !c.FromHeader {
			args := map[string]bool{}
			for _, r := range c.Rcpts {
				list, _ := parseAddresses(r, c.Domain)
				for _, a := range list {
					args[strings.ToLower(a.Address)] = true
				}
			}
			for _, r := range m.To {
				if !args[strings.ToLower(r)] {
					t.Fatalf("recipient %q is none of the arguments %q", r, c.Rcpts)
				}
			}
		}
		// The body is kept byte for byte when no line was too long.
		norm, err := message.NormalizeRaw(data)
		if err != nil {
			t.Fatalf("NUL input accepted: %q", data)
		}
		norm = message.DropFromLines(norm)
		if _, body, ok := bytes.Cut(norm, []byte("\r\n\r\n")); ok && !hasLongLine(norm) && !bytes.HasSuffix(raw, body) {
			t.Fatalf("body %q not kept in %q", body, raw)
		}
	})
}
