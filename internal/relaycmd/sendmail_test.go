package relaycmd

import (
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"relay365/internal/cli"
	"relay365/internal/queue"
)

// TestParseSendmail: the command lines real callers write, in sendmail's
// syntax (attached and separate values, -o options, --), and the long
// options as Go flags.
func TestParseSendmail(t *testing.T) {
	base := map[string]string{"RELAY_ACCOUNT": "alerts"}
	want := func(edit func(c *sendmailConfig)) sendmailConfig {
		c := sendmailConfig{Account: "alerts", NATSURL: queue.DefaultURL, Timeout: 30 * time.Second}
		edit(&c)
		return c
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want sendmailConfig
	}{
		{"cronie", base, []string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"},
			want(func(c *sendmailConfig) { c.FullName, c.IgnoreDots, c.Rcpts = "CronDaemon", true, []string{"root"} })},
		{"busybox crond, mdadm, logwatch", base, []string{"-t", "-oem", "-i"},
			want(func(c *sendmailConfig) { c.FromHeader, c.IgnoreDots = true, true })},
		{"PHP mail()", base, []string{"-t", "-i"},
			want(func(c *sendmailConfig) { c.FromHeader, c.IgnoreDots = true, true })},
		{"mutt", base, []string{"-oem", "-oi", "--", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"ops@contoso.com"} })},
		{"attached values", base, []string{"-fcron@web-3.contoso.com", "-FCron Daemon", "-Nnever", "-Rhdrs", "-Vid-1", "a@contoso.com", "b@contoso.com"},
			want(func(c *sendmailConfig) {
				c.Sender, c.FullName, c.Rcpts = "cron@web-3.contoso.com", "Cron Daemon", []string{"a@contoso.com", "b@contoso.com"}
			})},
		{"separate values", base, []string{"-f", "cron@web-3.contoso.com", "-F", "Cron Daemon", "-B", "8BITMIME", "-N", "never", "-o", "i", "-bm", "-v", "a@contoso.com"},
			want(func(c *sendmailConfig) {
				c.Sender, c.FullName, c.IgnoreDots, c.Rcpts = "cron@web-3.contoso.com", "Cron Daemon", true, []string{"a@contoso.com"}
			})},
		{"-r is -f", base, []string{"-r", "smartd@contoso.com", "root"},
			want(func(c *sendmailConfig) { c.Sender, c.Rcpts = "smartd@contoso.com", []string{"root"} })},
		{"-o options without -oi keep dots", base, []string{"-odi", "-odb", "-oee", "-om", "-oQ/var/spool/mqueue", "root"},
			want(func(c *sendmailConfig) { c.Rcpts = []string{"root"} })},
		{"-t with recipients too", base, []string{"-t", "extra@contoso.com"},
			want(func(c *sendmailConfig) { c.FromHeader, c.Rcpts = true, []string{"extra@contoso.com"} })},
		{"options end at the first recipient", base, []string{"root", "-i"},
			want(func(c *sendmailConfig) { c.Rcpts = []string{"root", "-i"} })},
		{"-- ends options", base, []string{"-i", "--", "-odd@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"-odd@contoso.com"} })},
		{"long options", nil, []string{"--account", "billing", "--nats-url=nats://nats.contoso.com:4222", "--timeout", "5s", "--domain", "@contoso.com", "-i", "root"},
			want(func(c *sendmailConfig) {
				c.Account, c.NATSURL, c.Timeout, c.Domain, c.IgnoreDots, c.Rcpts = "billing", "nats://nats.contoso.com:4222", 5*time.Second, "contoso.com", true, []string{"root"}
			})},
		{"NATS options as flags", base, []string{"--nats-user", "producer", "--nats-password-file", "/etc/relay/pw", "--nats-tls-ca=/etc/relay/ca.pem", "root"},
			want(func(c *sendmailConfig) {
				c.NATS = queue.ConnectOptions{User: "producer", PasswordFile: "/etc/relay/pw", TLSCA: "/etc/relay/ca.pem"}
				c.Rcpts = []string{"root"}
			})},
		{"environment", map[string]string{"RELAY_ACCOUNT": "ops", "RELAY_NATS_URL": "nats://10.0.0.5:4222", "RELAY_SENDMAIL_DOMAIN": "contoso.com", "RELAY_NATS_CREDS": "/etc/relay/producer.creds"}, []string{"root"},
			want(func(c *sendmailConfig) {
				c.Account, c.NATSURL, c.Domain, c.Rcpts = "ops", "nats://10.0.0.5:4222", "contoso.com", []string{"root"}
				c.NATS.CredsFile = "/etc/relay/producer.creds"
			})},
		{"flags win over the environment", base, []string{"--account", "billing", "root"},
			want(func(c *sendmailConfig) { c.Account, c.Rcpts = "billing", []string{"root"} })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSendmail(tt.args, Env{Stderr: io.Discard, Getenv: func(k string) string { return tt.env[k] }})
			if err != nil {
				t.Fatalf("%q: %v", tt.args, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("%q:\n got %+v\nwant %+v", tt.args, got, tt.want)
			}
		})
	}
}

// TestParseSendmailErrors: what is refused, each a usage error (exit 64)
// whose message says what to fix.
func TestParseSendmailErrors(t *testing.T) {
	base := map[string]string{"RELAY_ACCOUNT": "alerts"}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown option", base, []string{"-x", "root"}, "unknown option -x"},
		{"combined flags", base, []string{"-ti"}, "unknown option -ti (give one-letter options apart"},
		{"long option with one dash", base, []string{"-nats-url", "nats://h:4222", "root"}, "long options take two dashes: --nats-url"},
		{"unknown long option", base, []string{"--frobnicate", "root"}, "unknown option --frobnicate"},
		{"-f without a value", base, []string{"-f"}, "-f needs a value"},
		{"after a recipient an option is an address", base, []string{"root", "-o"}, ""}, // refused later, as an address
		{"long option without a value", base, []string{"--account"}, "--account needs a value"},
		{"SMTP on stdin", base, []string{"-bs"}, "-bs: only -bm"},
		{"the queue", base, []string{"-bp"}, "-bp: only -bm"},
		{"no account", nil, []string{"root"}, "no account: set RELAY_ACCOUNT or give --account"},
		{"bad account", base, []string{"--account", "Bad.Name", "root"}, `--account "Bad.Name"`},
		{"no recipients without -t", base, []string{"-i"}, "no recipients: give them as arguments, or -t"},
		{"bad timeout", base, []string{"--timeout", "soon", "root"}, "invalid value"},
		{"zero timeout", base, []string{"--timeout", "0s", "root"}, "--timeout 0s"},
		{"bad domain", base, []string{"--domain", "contoso com", "root"}, `--domain "contoso com"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSendmail(tt.args, Env{Stderr: io.Discard, Getenv: func(k string) string { return tt.env[k] }})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("%q: %v", tt.args, err)
				}
				return
			}
			if !cli.IsUsage(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%q: got %v, want a usage error containing %q", tt.args, err, tt.want)
			}
		})
	}
	var out strings.Builder
	if _, err := parseSendmail([]string{"--help"}, Env{Stderr: &out, Getenv: func(string) string { return "" }}); !errors.Is(err, flag.ErrHelp) ||
		!strings.Contains(out.String(), "Usage: relay sendmail") || !strings.Contains(out.String(), "  --nats-url string") {
		t.Fatalf("--help: %v\n%s", err, out.String())
	}
}

func TestEndAtDot(t *testing.T) {
	for in, want := range map[string]string{
		"a\n.\nb\n":       "a\n",
		"a\r\n.\r\nb\r\n": "a\r\n",
		".\n":             "",
		"a\n.":            "a\n",
		"a\n..\nb\n":      "a\n..\nb\n", // not a single dot
		"a\n. \nb\n":      "a\n. \nb\n",
		"a.\n.b\n":        "a.\n.b\n",
		"":                "",
	} {
		if got := string(endAtDot([]byte(in))); got != want {
			t.Errorf("endAtDot(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQualify(t *testing.T) {
	for in, want := range map[string]string{
		"root":                          "root@contoso.com",
		"root (Cron Daemon)":            "root@contoso.com (Cron Daemon)",
		`"(Cron Daemon)" <root>`:        `"(Cron Daemon)" <root@contoso.com>`,
		"mdadm monitoring <root>":       "mdadm monitoring <root@contoso.com>",
		"root, ops@fabrikam.com, admin": "root@contoso.com, ops@fabrikam.com, admin@contoso.com",
		`"Doe, John" <jdoe>, root`:      `"Doe, John" <jdoe@contoso.com>, root@contoso.com`,
		"<jdoe> (a, b)":                 "<jdoe@contoso.com> (a, b)",
		"ops@fabrikam.com":              "ops@fabrikam.com",
		"<>":                            "<>",
		"undisclosed-recipients:;":      "undisclosed-recipients:;",
	} {
		if got := qualify(in, "contoso.com"); got != want {
			t.Errorf("qualify(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTidyHeader(t *testing.T) {
	tests := []struct{ name, domain, in, want string }{
		{"cronie", "contoso.com",
			"From: \"(Cron Daemon)\" <root>\r\nTo: root\r\nSubject: Cron <root@web-3> backup\r\nMIME-Version: 1.0\r\n\r\nroot: done\r\n",
			"From: \"(Cron Daemon)\" <root@contoso.com>\r\nTo: <root@contoso.com>\r\nSubject: Cron <root@web-3> backup\r\nMIME-Version: 1.0\r\n\r\nroot: done\r\n"},
		{"folded, any case", "contoso.com",
			"to: root,\r\n\tadmin\r\nreply-to: Ops <ops>\r\nCc: Ops <ops@fabrikam.com>\r\n\r\n",
			"to: <root@contoso.com>, <admin@contoso.com>\r\nreply-to: \"Ops\" <ops@contoso.com>\r\nCc: Ops <ops@fabrikam.com>\r\n\r\n"},
		{"long lists fold", "contoso.com",
			"To: alpha, bravo, charlie, delta, echo, foxtrot\r\n\r\n",
			"To: <alpha@contoso.com>, <bravo@contoso.com>, <charlie@contoso.com>,\r\n <delta@contoso.com>, <echo@contoso.com>, <foxtrot@contoso.com>\r\n\r\n"},
		{"no domain: kept", "", "To: root\r\n\r\nx\r\n", "To: root\r\n\r\nx\r\n"},
		{"no header", "", "disk /dev/sda failing\r\n", "\r\ndisk /dev/sda failing\r\n"},
		{"header then text", "", "Subject: smartd\r\ndisk /dev/sda failing\r\n", "Subject: smartd\r\n\r\ndisk /dev/sda failing\r\n"},
		{"starts folded", "", " x: y\r\n", "\r\n x: y\r\n"},
		{"header only", "", "Subject: x\r\n", "Subject: x\r\n"},
		{"unparseable even qualified: kept", "contoso.com", "To: <<<\r\n\r\n", "To: <<<\r\n\r\n"},
	}
	for _, tt := range tests {
		if got := string(tidyHeader([]byte(tt.in), tt.domain)); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

// TestBuildSendmail: the message queued for an input, or why none is.
func TestBuildSendmail(t *testing.T) {
	cfg := func(edit func(c *sendmailConfig)) sendmailConfig {
		c := sendmailConfig{Account: "alerts", Domain: "contoso.com"}
		edit(&c)
		return c
	}
	tests := []struct {
		name     string
		c        sendmailConfig
		in       string
		to       []string
		rawHas   string // a line the queued raw message holds
		rawLacks string
		err      string
	}{
		{name: "cronie", c: cfg(func(c *sendmailConfig) { c.FullName, c.Rcpts = "CronDaemon", []string{"root"} }),
			in: "From: \"(Cron Daemon)\" <root>\nTo: root\nSubject: Cron <root@web-3> backup\n\ndone\n",
			to: []string{"root@contoso.com"}, rawHas: "From: \"(Cron Daemon)\" <root@contoso.com>\r\n"},
		{name: "-t", c: cfg(func(c *sendmailConfig) {
			c.FromHeader, c.Rcpts = true, []string{"extra@fabrikam.com", "OPS@contoso.com"}
		}),
			in: "To: ops@contoso.com, root\nCc: Audit <audit@fabrikam.com>\nBcc: secret@fabrikam.com\nBcc:\nSubject: x\n\nbody\n",
			to: []string{"ops@contoso.com", "root@contoso.com", "audit@fabrikam.com", "secret@fabrikam.com", "extra@fabrikam.com"}},
		{name: "-f and -F add a From line", c: cfg(func(c *sendmailConfig) {
			c.Sender, c.FullName, c.Rcpts = "smartd", "SMART Daemon", []string{"ops@contoso.com"}
		}),
			in: "Subject: disk\n\nfailing\n", to: []string{"ops@contoso.com"}, rawHas: "From: \"SMART Daemon\" <smartd@contoso.com>\r\n"},
		{name: "-f does not replace a From", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "smartd@contoso.com", []string{"ops@contoso.com"} }),
			in: "From: Backup <backup@contoso.com>\n\nx\n", to: []string{"ops@contoso.com"}, rawLacks: "smartd"},
		{name: "-f <> adds nothing", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "<>", []string{"ops@contoso.com"} }),
			in: "Subject: x\n\nx\n", to: []string{"ops@contoso.com"}, rawLacks: "From:"},
		{name: "no header", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "disk full\n", to: []string{"ops@contoso.com"}, rawHas: "\r\ndisk full\r\n"},
		{name: "empty input", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "", to: []string{"ops@contoso.com"}},
		{name: "NUL", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "Subject: x\n\na\x00b\n", err: "NUL"},
		{name: "-t without recipients", c: cfg(func(c *sendmailConfig) { c.FromHeader = true }),
			in: "Subject: x\n\nx\n", err: "no recipients in the To, Cc and Bcc fields"},
		{name: "local recipient without a domain", c: sendmailConfig{Account: "alerts", Rcpts: []string{"root"}},
			in: "Subject: x\n\nx\n", err: `recipient: "root" has no domain: set RELAY_SENDMAIL_DOMAIN`},
		{name: "local From without a domain", c: sendmailConfig{Account: "alerts", Rcpts: []string{"ops@contoso.com"}},
			in: "From: mdadm monitoring <root>\n\nx\n", err: "From field: \"mdadm monitoring <root>\" has no domain"},
		{name: "From that is no address", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "From: <<<\n\nx\n", err: "From field"},
		{name: "two From fields", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "From: a@contoso.com\nFrom: b@contoso.com\n\nx\n", err: "more than one From field"},
		{name: "bad recipient", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"a b@contoso.com"} }),
			in: "Subject: x\n\nx\n", err: "recipient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := buildSendmail(tt.c, []byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw := string(m.Raw)
			if m.Account != "alerts" || len(m.ID) != 32 || !reflect.DeepEqual(m.To, tt.to) ||
				!strings.Contains(raw, tt.rawHas) || (tt.rawLacks != "" && strings.Contains(raw, tt.rawLacks)) ||
				strings.Contains(strings.ReplaceAll(raw, "\r\n", ""), "\n") {
				t.Fatalf("queued %+v\nraw %q", m, raw)
			}
		})
	}
}
