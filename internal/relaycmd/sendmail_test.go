package relaycmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/cli"
	"relay365/internal/daemon"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/testutil"
	"relay365/internal/token"
)

// TestParseSendmail: the command lines real callers write, in sendmail's
// syntax (attached and separate values, -o options, --), and the long
// options as Go flags.
func TestParseSendmail(t *testing.T) {
	base := map[string]string{"RELAY_ACCOUNT": "alerts"}
	want := func(edit func(c *sendmailConfig)) sendmailConfig {
		c := sendmailConfig{Account: "alerts", NATS: natsClient{URL: queue.DefaultURL, DataDir: cli.DefaultDataDir}, Timeout: 30 * time.Second, Spool: defaultSpool}
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
				c.Account, c.NATS.URL, c.Timeout, c.Domain, c.IgnoreDots, c.Rcpts = "billing", "nats://nats.contoso.com:4222", 5*time.Second, "contoso.com", true, []string{"root"}
			})},
		{"NATS options as flags", base, []string{"--nats-user", "producer", "--nats-password-file", "/etc/relay/pw", "--nats-tls-ca=/etc/relay/ca.pem", "root"},
			want(func(c *sendmailConfig) {
				c.NATS.Opts = queue.ConnectOptions{User: "producer", PasswordFile: "/etc/relay/pw", TLSCA: "/etc/relay/ca.pem"}
				c.Rcpts = []string{"root"}
			})},
		{"environment", map[string]string{"RELAY_ACCOUNT": "ops", "RELAY_NATS_URL": "nats://10.0.0.5:4222", "RELAY_SENDMAIL_DOMAIN": "contoso.com", "RELAY_NATS_CREDS": "/etc/relay/producer.creds"}, []string{"root"},
			want(func(c *sendmailConfig) {
				c.Account, c.NATS.URL, c.Domain, c.Rcpts = "ops", "nats://10.0.0.5:4222", "contoso.com", []string{"root"}
				c.NATS.Opts.CredsFile = "/etc/relay/producer.creds"
			})},
		{"flags win over the environment", base, []string{"--account", "billing", "root"},
			want(func(c *sendmailConfig) { c.Account, c.Rcpts = "billing", []string{"root"} })},
		// getopt(3), as both sendmails read their options: letters
		// cluster, and the last of a cluster may take the rest as its value.
		{"clustered -ti", base, []string{"-ti"},
			want(func(c *sendmailConfig) { c.FromHeader, c.IgnoreDots = true, true })},
		{"clustered -it", base, []string{"-it", "extra@contoso.com"},
			want(func(c *sendmailConfig) {
				c.FromHeader, c.IgnoreDots, c.Rcpts = true, true, []string{"extra@contoso.com"}
			})},
		{"clustered value", base, []string{"-tf", "cron@contoso.com", "-ioem"},
			want(func(c *sendmailConfig) { c.FromHeader, c.IgnoreDots, c.Sender = true, true, "cron@contoso.com" })},
		{"mailx with metoo, and other ignored options", base, []string{"-i", "-m", "-U", "-G", "-LCRON", "-Am", "-C/etc/mail/sendmail.cf", "-X", "/tmp/x", "-ODeliveryMode=b", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"ops@contoso.com"} })},
		{"-q: no account, no recipients", nil, []string{"-q"},
			want(func(c *sendmailConfig) { c.Account, c.Queue = "", true })},
		{"-q clustered, the spool named", map[string]string{"RELAY_SENDMAIL_SPOOL": "/srv/spool"}, []string{"-iq"},
			want(func(c *sendmailConfig) { c.Account, c.Queue, c.IgnoreDots, c.Spool = "", true, true, "/srv/spool" })},
		{"spool off", base, []string{"--spool", "off", "root"},
			want(func(c *sendmailConfig) { c.Spool, c.Rcpts = "", []string{"root"} })},
		{"Laravel: SMTP on stdin", base, []string{"-bs", "-i"},
			want(func(c *sendmailConfig) { c.SMTP, c.IgnoreDots = true, true })},
		{"-h N is a hop count, not help", base, []string{"-h", "17", "-oi", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"ops@contoso.com"} })},
		{"-n (no aliasing), ignored", base, []string{"-n", "-oi", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"ops@contoso.com"} })},
		{"-hN", base, []string{"-h17", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} })},
		// Postfix's sendmail(1): NAME is the full name, and -F
		// overrides it (an empty -F too).
		{"NAME without -F", map[string]string{"RELAY_ACCOUNT": "alerts", "NAME": "Backup Job"}, []string{"root"},
			want(func(c *sendmailConfig) { c.FullName, c.Rcpts = "Backup Job", []string{"root"} })},
		{"-F over NAME", map[string]string{"RELAY_ACCOUNT": "alerts", "NAME": "Backup Job"}, []string{"-FCronDaemon", "root"},
			want(func(c *sendmailConfig) { c.FullName, c.Rcpts = "CronDaemon", []string{"root"} })},
		{"-F empty over NAME", map[string]string{"RELAY_ACCOUNT": "alerts", "NAME": "Backup Job"}, []string{"-F", "", "root"},
			want(func(c *sendmailConfig) { c.Rcpts = []string{"root"} })},
		{"-O IgnoreDots", base, []string{"-O", "IgnoreDots=True", "ops@contoso.com"},
			want(func(c *sendmailConfig) { c.IgnoreDots, c.Rcpts = true, []string{"ops@contoso.com"} })},
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
		{"unknown letter in a cluster", base, []string{"-tx"}, "unknown option -tx"},
		{"long option with one dash, first letter known", base, []string{"-timeout", "5s", "root"}, "long options take two dashes: --timeout"},
		{"long option with one dash", base, []string{"-nats-url", "nats://h:4222", "root"}, "long options take two dashes: --nats-url"},
		{"unknown long option", base, []string{"--frobnicate", "root"}, "unknown option --frobnicate"},
		{"-f without a value", base, []string{"-f"}, "-f needs a value"},
		{"-h last, after others: a hop count without a value", base, []string{"-t", "-h"}, "-h needs a value"},
		{"after a recipient an option is an address", base, []string{"root", "-o"}, ""}, // refused later, as an address
		{"long option without a value", base, []string{"--account"}, "--account needs a value"},
		{"-bs with recipients", base, []string{"-bs", "root"}, "-bs takes the recipients from RCPT TO"},
		{"-bs and -q", base, []string{"-bs", "-q"}, "-bs and -q"},
		{"addresses", base, []string{"-bv", "root"}, "-bv: only -bm"},
		{"the queue", base, []string{"-bp"}, "-bp: only -bm"},
		{"no account", nil, []string{"root"}, "no account: set RELAY_ACCOUNT or give --account"},
		{"bad account", base, []string{"--account", "Bad.Name", "root"}, `--account "Bad.Name"`},
		{"no recipients without -t", base, []string{"-i"}, "no recipients: give them as arguments, or -t"},
		{"bad timeout", base, []string{"--timeout", "soon", "root"}, "invalid value"},
		{"zero timeout", base, []string{"--timeout", "0s", "root"}, "--timeout 0s"},
		{"-q with an interval", base, []string{"-q1h"}, "unknown option -q1h: only -q alone"},
		{"-q with recipients", base, []string{"-q", "root"}, "-q sends what the spool holds and takes no recipients"},
		{"-q with the spool off", base, []string{"-q", "--spool", "off"}, "-q: the spool is off"},
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
	for _, help := range []string{"--help", "-h"} {
		var out strings.Builder
		if _, err := parseSendmail([]string{help}, Env{Stderr: &out, Getenv: func(string) string { return "" }}); !errors.Is(err, flag.ErrHelp) ||
			!strings.Contains(out.String(), "Usage: relay sendmail") || !strings.Contains(out.String(), "  --nats-url string") {
			t.Fatalf("%s: %v\n%s", help, err, out.String())
		}
		// The defaults the README states, as the other commands' help
		// shows them; flags without one say nothing.
		for _, want := range []string{
			"(exit 75) (default 30s)",
			"(env RELAY_SENDMAIL_SPOOL) (default \"/var/spool/relay365\")",
			"(env RELAY_NATS_URL) (default \"nats://127.0.0.1:4222\")",
			"(env RELAY_DATA_DIR) (default \"data\")",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: help lacks %q:\n%s", help, want, out.String())
			}
		}
		if strings.Contains(out.String(), "(env RELAY_ACCOUNT) (default") {
			t.Errorf("%s: --account has no default, yet the help names one:\n%s", help, out.String())
		}
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
		if got, err := readSendmail(strings.NewReader(in), false); string(got) != want || err != nil {
			t.Errorf("readSendmail(%q) = %q, %v; want %q", in, got, err, want)
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
		// RFC 5322 §4.5.3's obsolete white space before the colon: the
		// field is kept (it ended the header) and written without it.
		{"space before the colon", "contoso.com",
			"Subject : disk full\r\nTo\t: root\r\nX-Job  :  nightly\r\n\r\nbody\r\n",
			"Subject: disk full\r\nTo: <root@contoso.com>\r\nX-Job:  nightly\r\n\r\nbody\r\n"},
		{"a space inside a name is no field", "", "Sub ject: x\r\n\r\n", "\r\nSub ject: x\r\n\r\n"},
		{"only white space before the colon is no field", "", " : x\r\n", "\r\n : x\r\n"},
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
		{name: "-t with display names in legacy charsets", c: cfg(func(c *sendmailConfig) { c.FromHeader = true }),
			in: "From: =?windows-1252?Q?Caf=E9_=80?= <cafe@contoso.com>\nTo: =?iso-8859-15?Q?=A4_Ops?= <ops@contoso.com>\nCc: =?koi8-r?B?8NLJ18XU?= <audit@fabrikam.com>\n\nx\n",
			to: []string{"ops@contoso.com", "audit@fabrikam.com"}, rawHas: "From: =?windows-1252?Q?Caf=E9_=80?= <cafe@contoso.com>\r\n"},
		{name: "-f and -F add a From line", c: cfg(func(c *sendmailConfig) {
			c.Sender, c.FullName, c.Rcpts = "smartd", "SMART Daemon", []string{"ops@contoso.com"}
		}),
			in: "Subject: disk\n\nfailing\n", to: []string{"ops@contoso.com"}, rawHas: "From: \"SMART Daemon\" <smartd@contoso.com>\r\n"},
		{name: "-f does not replace a From", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "smartd@contoso.com", []string{"ops@contoso.com"} }),
			in: "From: Backup <backup@contoso.com>\n\nx\n", to: []string{"ops@contoso.com"}, rawLacks: "smartd"},
		{name: "-f <> adds nothing", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "<>", []string{"ops@contoso.com"} }),
			in: "Subject: x\n\nx\n", to: []string{"ops@contoso.com"}, rawLacks: "From:"},
		{name: "-f that is no address", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "cron@@x", []string{"ops@contoso.com"} }),
			in: "Subject: x\n\nx\n", err: "-f:"},
		{name: "-f without a domain", c: sendmailConfig{Account: "alerts", Sender: "root", Rcpts: []string{"ops@contoso.com"}},
			in: "Subject: x\n\nx\n", err: `-f: "root" has no domain: set RELAY_SENDMAIL_DOMAIN`},
		{name: "a bad -f beside a From is not used", c: cfg(func(c *sendmailConfig) { c.Sender, c.Rcpts = "cron@@x", []string{"ops@contoso.com"} }),
			in: "From: backup@contoso.com\n\nx\n", to: []string{"ops@contoso.com"}, rawLacks: "cron@@x"},
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
		{name: "long line, single part: quoted-printable", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "Subject: x\nContent-Transfer-Encoding: 8bit\n\n" + strings.Repeat("y", 1000) + "\n", to: []string{"ops@contoso.com"},
			rawHas: "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + strings.Repeat("y", 75) + "=\r\n", rawLacks: "8bit"},
		{name: "long line in a multipart: not rewritten", c: cfg(func(c *sendmailConfig) { c.Rcpts = []string{"ops@contoso.com"} }),
			in: "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\n" + strings.Repeat("y", 1000) + "\n--b--\n", err: "more than SMTP carries"},
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

// queued returns the message at seq in MAIL, decoded.
func queued(t *testing.T, ctx context.Context, js jetstream.JetStream, seq uint64) (*jetstream.RawStreamMsg, *message.Message) {
	t.Helper()
	stream, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	m, err := message.Decode(raw.Data)
	if err != nil {
		t.Fatalf("queued JSON %s: %v", raw.Data, err)
	}
	return raw, m
}

// mailCount is the number of messages in MAIL.
func mailCount(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	return queuetest.Msgs(t, ctx, js, queue.StreamMail)
}

// cronMail is what cronie pipes into sendmail after a job printed
// something: its own header (unqualified local names), LF line endings,
// 8-bit text, and output that holds a line of a single dot.
const cronMail = `From: "(Cron Daemon)" <root>
To: root
Subject: Cron <root@web-3> /usr/local/bin/backup
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit
X-Cron-Env: <SHELL=/bin/sh>

backup done: 3 files
.
résumé: ok
`

// TestSendmailCron: cronie's invocation with its LF input queues one
// message on mail.send.<account>: To the recipient qualified with the
// domain, Raw the message with CRLF (the dot line kept: -i), the local
// names in From and To qualified, nothing printed.
func TestSendmailCron(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_DOMAIN": "contoso.com"}
	r := run(t, vars, cronMail, "sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root")
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d messages in MAIL, want 1", n)
	}
	sm, m := queued(t, ctx, env.JS, 1)
	want := strings.ReplaceAll(cronMail, "\n", "\r\n")
	want = strings.Replace(want, `From: "(Cron Daemon)" <root>`, `From: "(Cron Daemon)" <root@contoso.com>`, 1)
	want = strings.Replace(want, "To: root\r\n", "To: <root@contoso.com>\r\n", 1)
	if sm.Subject != "mail.send.alerts" || sm.Header.Get(jetstream.MsgIDHeader) != m.ID || m.Account != "alerts" || len(m.ID) != 32 ||
		!reflect.DeepEqual(m.To, []string{"root@contoso.com"}) || m.Subject != "" || m.Text != "" {
		t.Fatalf("queued on %s (%v): %+v", sm.Subject, sm.Header, m)
	}
	if string(m.Raw) != want {
		t.Fatalf("raw\n got %q\nwant %q", m.Raw, want)
	}
	// As the worker renders it: From the mailbox with cron's display
	// name, cron's address as Reply-To.
	rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: message.PolicyRewrite}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hdr := renderedHeader(t, rendered.Data)
	if hdr.Get("From") != `"(Cron Daemon)" <alerts@contoso.com>` || replyTo(t, hdr) != "root@contoso.com" || rendered.MailFrom != "alerts@contoso.com" {
		t.Fatalf("rendered header %v, MAIL FROM %s", hdr, rendered.MailFrom)
	}
}

// replyTo is the one address of the Reply-To field.
func replyTo(t *testing.T, hdr mail.Header) string {
	t.Helper()
	list, err := hdr.AddressList("Reply-To")
	if err != nil || len(list) != 1 {
		t.Fatalf("Reply-To %q: %v", hdr.Get("Reply-To"), err)
	}
	return list[0].Address
}

func renderedHeader(t *testing.T, data []byte) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(string(data)))
	if err != nil {
		t.Fatalf("rendered message does not parse: %v\n%s", err, data)
	}
	return msg.Header
}

// TestSendmailHeaderRecipients: -t takes the recipients from To, Cc and
// Bcc (as mdadm and logwatch call it, without -i: a single dot ends the
// message); rendered for the account, From is the mailbox and the Bcc
// field is gone while its address stays in the envelope.
func TestSendmailHeaderRecipients(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
	in := "From: Backup Job <backup@web-3.contoso.com>\nTo: ops@contoso.com, Dev <dev@contoso.com>\nCc: audit@fabrikam.com\nBcc: secret@fabrikam.com\nSubject: nightly backup\n\nall good\n.\nnot part of the message\n"
	r := run(t, vars, in, "sendmail", "-t")
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	_, m := queued(t, ctx, env.JS, 1)
	if want := []string{"ops@contoso.com", "dev@contoso.com", "audit@fabrikam.com", "secret@fabrikam.com"}; !reflect.DeepEqual(m.To, want) {
		t.Fatalf("To %v, want %v", m.To, want)
	}
	if !strings.HasSuffix(string(m.Raw), "\r\n\r\nall good\r\n") {
		t.Fatalf("raw does not end at the dot: %q", m.Raw)
	}
	rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: message.PolicyRewrite}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hdr := renderedHeader(t, rendered.Data)
	from, err := hdr.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Address != "alerts@contoso.com" || from[0].Name != "Backup Job" {
		t.Fatalf("rendered From %v (%v)", from, err)
	}
	if _, ok := hdr["Bcc"]; ok || strings.Contains(string(rendered.Data), "secret@") {
		t.Fatalf("the Bcc field was sent:\n%s", rendered.Data)
	}
	if replyTo(t, hdr) != "backup@web-3.contoso.com" || !reflect.DeepEqual(rendered.Rcpts, m.To) {
		t.Fatalf("Reply-To %q, envelope %v", hdr.Get("Reply-To"), rendered.Rcpts)
	}
}

// TestSendmailExitCodes: sysexits.h codes, with the reason on stderr,
// and nothing queued when the answer is not 0.
func TestSendmailExitCodes(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	good := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
	tests := []struct {
		name   string
		vars   map[string]string
		stdin  string
		args   []string
		code   int
		stderr string
	}{
		{"no account", map[string]string{"RELAY_NATS_URL": env.URL}, "Subject: x\n\nx\n", []string{"ops@contoso.com"}, 64, "relay sendmail: no account: set RELAY_ACCOUNT"},
		{"bad flag", good, "", []string{"-q1h"}, 64, "unknown option -q1h"},
		{"no recipients", good, "Subject: x\n\nx\n", []string{"-i"}, 64, "no recipients"},
		{"unreadable NATS password file", good, "", []string{"--nats-user", "u", "--nats-password-file", "/nonexistent/pw", "ops@contoso.com"}, 64, "--nats-password-file"},
		{"NUL", good, "Subject: x\n\na\x00b\n", []string{"ops@contoso.com"}, 65, "NUL byte"},
		{"-t without recipients", good, "Subject: x\n\nx\n", []string{"-t"}, 65, "no recipients in the To, Cc and Bcc fields"},
		{"unparseable From", good, "From: <<<\nSubject: x\n\nx\n", []string{"ops@contoso.com"}, 65, "From field"},
		{"root without a domain", good, "Subject: x\n\nx\n", []string{"root"}, 65, "set RELAY_SENDMAIL_DOMAIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.vars, tt.stdin, append([]string{"sendmail"}, tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) || r.stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d and %q", r.code, r.stdout, r.stderr, tt.code, tt.stderr)
			}
		})
	}
	if n := mailCount(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d messages queued by refused invocations", n)
	}
	if r := run(t, nil, "", "--help"); !strings.Contains(r.stdout, "sendmail  queue a message from stdin") {
		t.Fatalf("relay usage does not list sendmail:\n%s", r.stdout)
	}
}

// TestSendmailTempFail: whatever a later try may cure exits 75, within
// --timeout: NATS not listening, a server that never answers, JetStream
// without the MAIL stream, and a full stream. What cannot be cured by
// waiting (nothing listens, the stream is full) does not wait for a 90 s
// --timeout; a silent server is given up at a 1 s one. The 30 s bound
// tells those apart with room for a loaded -race run: it is not a speed
// assertion.
func TestSendmailTempFail(t *testing.T) {
	msg := "Subject: x\n\nx\n"
	tempfail := func(t *testing.T, vars map[string]string, want string, args ...string) {
		t.Helper()
		start := time.Now()
		r := run(t, vars, msg, append([]string{"sendmail"}, args...)...)
		if r.code != 75 || !strings.Contains(r.stderr, want) {
			t.Fatalf("exit %d, stderr %q; want 75 and %q", r.code, r.stderr, want)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("took %v: waited for the timeout", d)
		}
	}
	t.Run("NATS not listening", func(t *testing.T) {
		tempfail(t, map[string]string{"RELAY_NATS_URL": "nats://127.0.0.1:1", "RELAY_ACCOUNT": "alerts"}, "is relay serve or relay sandbox running", "--timeout", "90s", "ops@contoso.com")
	})
	t.Run("NATS silent", func(t *testing.T) {
		// The kernel completes the handshake of a listener nobody
		// accepts on, so the client waits for an INFO that never comes.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		tempfail(t, map[string]string{"RELAY_NATS_URL": "nats://" + ln.Addr().String(), "RELAY_ACCOUNT": "alerts"}, "connect to NATS", "--timeout", "1s", "ops@contoso.com")
	})
	t.Run("no MAIL stream", func(t *testing.T) {
		env := queuetest.Start(t)
		tempfail(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}, "not queued", "--timeout", "1s", "ops@contoso.com")
	})
	t.Run("no streams, a message for the body store", func(t *testing.T) {
		// Over message.InlineMax: its content goes to the body store,
		// whose bucket relay serve makes with MAIL. Not there yet is as
		// temporary for it as for a small message.
		env := queuetest.Start(t)
		big := "Subject: x\n\n" + strings.Repeat(strings.Repeat("y", 70)+"\n", 5000)
		start := time.Now()
		r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}, big, "sendmail", "--timeout", "1s", "ops@contoso.com")
		if r.code != 75 || !strings.Contains(r.stderr, "not queued") {
			t.Fatalf("exit %d, stderr %q; want 75 and %q", r.code, r.stderr, "not queued")
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("stream full", func(t *testing.T) {
		env, ctx := queuetest.StartMail(t)
		vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
		if r := run(t, vars, msg, "sendmail", "ops@contoso.com"); r.code != 0 {
			t.Fatalf("first message: exit %d: %s", r.code, r.stderr)
		}
		stream, err := env.JS.Stream(ctx, queue.StreamMail)
		if err != nil {
			t.Fatal(err)
		}
		cfg := stream.CachedInfo().Config
		cfg.MaxMsgs = 1
		if _, err := env.JS.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		tempfail(t, vars, "the MAIL stream is full", "--timeout", "90s", "ops@contoso.com")
		if n := mailCount(t, ctx, env.JS); n != 1 {
			t.Fatalf("%d messages in MAIL, want 1", n)
		}
	})
}

// TestSendmailNoPerm: a NATS server that refuses the login, or the
// subject, exits 77 at once (not after --timeout).
func TestSendmailNoPerm(t *testing.T) {
	ns := startPlainNATS(t, &server.Options{Users: []*server.User{
		{Username: "cron", Password: "cron-password-1", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{"mail.send.billing"}},
		}},
	}})
	pw := testutil.WriteFile(t, "pw", "cron-password-1\n")
	for _, tt := range []struct {
		name, want string
		vars       map[string]string
	}{
		{"no credentials", "Authorization Violation", map[string]string{"RELAY_ACCOUNT": "alerts"}},
		{"wrong password", "Authorization Violation", map[string]string{"RELAY_ACCOUNT": "alerts", "RELAY_NATS_USER": "cron", "RELAY_NATS_PASSWORD": "wrong"}},
		{"subject not permitted", "permissions violation", map[string]string{"RELAY_ACCOUNT": "alerts", "RELAY_NATS_USER": "cron", "RELAY_NATS_PASSWORD_FILE": pw}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.vars["RELAY_NATS_URL"] = ns.ClientURL()
			start := time.Now()
			r := run(t, tt.vars, "Subject: x\n\nx\n", "sendmail", "--timeout", "90s", "ops@contoso.com")
			if r.code != 77 || !strings.Contains(strings.ToLower(r.stderr), strings.ToLower(tt.want)) {
				t.Fatalf("exit %d, stderr %q; want 77 and %q", r.code, r.stderr, tt.want)
			}
			if d := time.Since(start); d > 30*time.Second { // far from the 90 s timeout
				t.Fatalf("took %v: waited for the timeout", d)
			}
		})
	}
}

// TestSendmailMaxPayload: a message larger than the NATS server takes
// (an external server's max_payload is 1 MiB unless raised) can never be
// queued there: 65, not a retry.
func TestSendmailMaxPayload(t *testing.T) {
	ns := startPlainNATS(t, &server.Options{MaxPayload: 4096})
	big := "Subject: logwatch\n\n" + strings.Repeat(strings.Repeat("x", 79)+"\n", 100)
	r := run(t, map[string]string{"RELAY_NATS_URL": ns.ClientURL(), "RELAY_ACCOUNT": "alerts"}, big, "sendmail", "ops@contoso.com")
	if r.code != 65 || !strings.Contains(r.stderr, "maximum payload exceeded") {
		t.Fatalf("exit %d, stderr %q; want 65", r.code, r.stderr)
	}
}

// startPlainNATS runs a nats-server without JetStream on a free loopback
// port: enough to see logins, permissions and payload limits enforced.
func startPlainNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	return ns
}

// TestCommandLineAsSendmail: a symlink named sendmail runs relay sendmail
// with the arguments as given; under any other name nothing changes.
func TestCommandLineAsSendmail(t *testing.T) {
	for _, tt := range []struct {
		argv0 string
		args  []string
		want  []string
	}{
		{"/usr/sbin/sendmail", []string{"-t", "-i"}, []string{"sendmail", "-t", "-i"}},
		{"sendmail", nil, []string{"sendmail"}},
		{"/usr/lib/sendmail", []string{"-oi", "root"}, []string{"sendmail", "-oi", "root"}},
		{"/usr/local/bin/relay", []string{"publish", "-f", "-"}, []string{"publish", "-f", "-"}},
		{"relay", []string{"sendmail", "root"}, []string{"sendmail", "root"}},
	} {
		if got := commandLine(tt.argv0, tt.args); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("commandLine(%q, %q) = %q, want %q", tt.argv0, tt.args, got, tt.want)
		}
	}
}

// TestSendmailOnTheRelaysHost: against relay serve's embedded server,
// which admits no stranger, sendmail finds the producer seed in
// --data-dir (RELAY_DATA_DIR) by itself; without it NATS refuses (77).
func TestSendmailOnTheRelaysHost(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := daemon.Start(ctx, daemon.Config{NATSListen: "127.0.0.1:0", DataDir: dir, KeyFile: key, HTTPAddr: "off"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	vars := map[string]string{"RELAY_NATS_URL": d.NATSURL, "RELAY_ACCOUNT": "alerts", "RELAY_DATA_DIR": dir}
	if r := run(t, vars, "Subject: disk\n\n92% full\n", "sendmail", "-i", "ops@contoso.com"); r.code != 0 {
		t.Fatalf("with the relay's data dir: exit %d, %s", r.code, r.stderr)
	}
	if n := mailCount(t, ctx, d.JS); n != 1 {
		t.Fatalf("%d messages in MAIL, want 1", n)
	}
	vars["RELAY_DATA_DIR"] = t.TempDir()
	if r := run(t, vars, "Subject: disk\n\n92% full\n", "sendmail", "-i", "ops@contoso.com"); r.code != exNoPerm {
		t.Fatalf("without a seed: exit %d, want %d (%s)", r.code, exNoPerm, r.stderr)
	}
	// The other commands say why NATS refused them and what to name,
	// not to check that a running relay runs.
	for _, args := range [][]string{{"dlq", "list"}, {"publish", "--account", "alerts", "--to", "ops@contoso.com", "--subject", "x", "--text", "y"}} {
		r := run(t, vars, "", args...)
		if r.code == 0 || !strings.Contains(r.stderr, "refused this command's credentials") || !strings.Contains(r.stderr, "--data-dir") {
			t.Errorf("%s without a seed: exit %d, %q: want the credentials named as the cause", args[0], r.code, r.stderr)
		}
	}
}

// TestSendmailFromLine: a message that starts with an mbox "From " line
// (formail, procmail, a script that cats a saved message: "formail -s
// sendmail -oi -t < mbox") has that line dropped, as Postfix's and
// Sendmail's sendmail drop it, instead of the line starting the body and
// taking the whole header with it.
func TestSendmailFromLine(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
	for i, in := range []string{
		"From root@web-3.contoso.com  Mon Dec  7 03:00:00 2026\nTo: ops@contoso.com\nSubject: nightly backup\n\nall good\n",
		">From root@web-3.contoso.com  Mon Dec  7 03:00:00 2026\nTo: ops@contoso.com\nSubject: nightly backup\n\nall good\n",
	} {
		r := run(t, vars, in, "sendmail", "-oi", "-t")
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", in, r.code, r.stderr)
		}
		_, m := queued(t, ctx, env.JS, uint64(i+1))
		if want := "To: ops@contoso.com\r\nSubject: nightly backup\r\n\r\nall good\r\n"; string(m.Raw) != want || !reflect.DeepEqual(m.To, []string{"ops@contoso.com"}) {
			t.Fatalf("%q: queued To %v, raw\n got %q\nwant %q", in, m.To, m.Raw, want)
		}
	}
}

// TestSendmailLongBodyLine: a job that prints a line longer than SMTP
// carries (998 octets: a JSON document, a long log line) still gets its
// mail, as Postfix and Sendmail take it, instead of exit 65 and cron's
// mail lost: a single-part message is sent quoted-printable, which
// decodes to the output as printed.
func TestSendmailLongBodyLine(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_DOMAIN": "contoso.com"}
	body := "report:\n{\"host\":\"web-3\",\"items\":[" + strings.Repeat(`"r\u00e9sum\u00e9 = ok",`, 120) + "\"end\"]}\n" + strings.Repeat("x", 2000) + "\n.\ndone\n"
	body = strings.ReplaceAll(body, `\u00e9`, "é")
	for _, hdr := range []string{
		"From: \"(Cron Daemon)\" <root>\nTo: root\nSubject: Cron <root@web-3> report\n",
		"From: \"(Cron Daemon)\" <root>\nTo: root\nSubject: Cron <root@web-3> report\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n",
	} {
		n := mailCount(t, ctx, env.JS)
		r := run(t, vars, hdr+"\n"+body, "sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root")
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		_, m := queued(t, ctx, env.JS, n+1)
		rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: message.PolicyRewrite}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		msg, err := mail.ReadMessage(strings.NewReader(string(rendered.Data)))
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get("Content-Transfer-Encoding") != "quoted-printable" || msg.Header.Get("Mime-Version") != "1.0" ||
			msg.Header.Get("Subject") != "Cron <root@web-3> report" || len(msg.Header["Content-Transfer-Encoding"]) != 1 {
			t.Fatalf("rendered header %v", msg.Header)
		}
		// The UTF-8 body keeps a charset: the producer's, or utf-8 where
		// it gave none (without one it would read as us-ascii).
		if ct := msg.Header.Get("Content-Type"); !strings.Contains(strings.ToLower(ct), "charset=utf-8") || len(msg.Header["Content-Type"]) != 1 {
			t.Fatalf("rendered Content-Type %q", msg.Header["Content-Type"])
		}
		got, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.ReplaceAll(body, "\n", "\r\n"); string(got) != want {
			t.Fatalf("decoded body\n got %q\nwant %q", got, want)
		}
	}
}

// terminal is standard input as a terminal (or a pipe whose writer
// waits) hands it over: one Read returns one line. Once the lines are
// read, a Read is what would block until the user types ^D: an error.
type terminal struct{ lines []string }

var errBlocked = errors.New("read after the last line: a terminal would wait here for ^D")

func (tt *terminal) Read(p []byte) (int, error) {
	if len(tt.lines) == 0 {
		return 0, errBlocked
	}
	n := copy(p, tt.lines[0])
	if tt.lines[0] = tt.lines[0][n:]; tt.lines[0] == "" {
		tt.lines = tt.lines[1:]
	}
	return n, nil
}

// TestReadSendmail: without -i, input ends at a line of a single dot and
// nothing after it is read (sendmail(8), Postfix sendmail(1)); with -i
// it ends at EOF.
func TestReadSendmail(t *testing.T) {
	long := strings.Repeat("y", 4096) // bufio's buffer: the dot comes in a Read of its own
	tests := []struct {
		name       string
		lines      []string
		eof        bool // after the lines, EOF; else a Read blocks
		ignoreDots bool
		want       string
	}{
		{"dot ends", []string{"Subject: x\n", "\n", "hi\n", ".\n"}, false, false, "Subject: x\n\nhi\n"},
		{"dot CRLF ends", []string{"Subject: x\r\n", "\r\n", ".\r\n"}, false, false, "Subject: x\r\n\r\n"},
		{"dot at EOF without newline", []string{"a\n", "."}, true, false, "a\n"},
		{"no dot: EOF", []string{"a\n", "b"}, true, false, "a\nb"},
		{"dot inside a long line is text", []string{long + ".\n", "b\n"}, true, false, long + ".\nb\n"},
		{"dot after a long line ends", []string{long + "\n", ".\n"}, false, false, long + "\n"},
		{"-i: the dot is text", []string{"a\n", ".\n", "b\n"}, true, true, "a\n.\nb\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r io.Reader = &terminal{lines: slices.Clone(tt.lines)}
			if tt.eof {
				r = strings.NewReader(strings.Join(tt.lines, ""))
			}
			got, err := readSendmail(r, tt.ignoreDots)
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %.200q, %v; want %.200q", got, err, tt.want)
			}
		})
	}
}

// TestSendmailTerminal: someone types a message at a terminal and ends
// it with a line of a single dot, as sendmail(8) says; sendmail queues
// it then, without waiting for a ^D nobody told them to type.
func TestSendmailTerminal(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	var out, errb strings.Builder
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": "off"}
	code := Run(ctx, []string{"sendmail", "ops@contoso.com"}, Env{
		Stdin:  &terminal{lines: []string{"Subject: test\n", "\n", "hello\n", ".\n"}},
		Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return vars[k] },
	})
	if code != 0 || out.String() != "" || errb.String() != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if _, m := queued(t, ctx, env.JS, 1); string(m.Raw) != "Subject: test\r\n\r\nhello\r\n" {
		t.Fatalf("raw %q", m.Raw)
	}
}

// TestSendmailFullNameWithoutFrom: -F alone (cronie passes -FCronDaemon,
// scripts "-F 'Backup job'") on a message with no From field and no -f
// is the display name of the From the relay writes, the mailbox, as
// Postfix's sendmail(1) uses -F "only with messages that have no From:
// message header" and Sendmail's sendmail(8) for the From it generates.
// Under every From policy (the name names no other address: no Reply-To,
// nothing for reject to refuse).
func TestSendmailFullNameWithoutFrom(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts"}
	r := run(t, vars, "Subject: disk\n\nfailing\n", "sendmail", "-F", "Backup Jöb", "ops@contoso.com")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	_, m := queued(t, ctx, env.JS, 1)
	for _, p := range []message.FromPolicy{message.PolicyRewrite, message.PolicyAllow, message.PolicyReject} {
		rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: p}, time.Now())
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		hdr := renderedHeader(t, rendered.Data)
		from, err := hdr.AddressList("From")
		if err != nil || len(from) != 1 || from[0].Name != "Backup Jöb" || from[0].Address != "alerts@contoso.com" ||
			len(hdr["From"]) != 1 || hdr.Get("Reply-To") != "" || strings.Contains(string(rendered.Data), ".invalid") {
			t.Fatalf("%s: rendered From %v (%v):\n%s", p, from, err, rendered.Data)
		}
	}
}

// TestSendmailResentRecipients: with -t, a message being resent (mutt's
// bounce, a script forwarding a saved message: Resent-From, Resent-To,
// ... above the original header) goes to its Resent-To, Resent-Cc and
// Resent-Bcc addresses, not back to its original To, Cc and Bcc, as
// Postfix's cleanup(8) extracts "(Resent-) To:, Cc: and Bcc:" (any
// Resent- field present, only those) and sendmail(8) does; the arguments
// are added as always. The Resent-Bcc field is not sent.
func TestSendmailResentRecipients(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_DOMAIN": "contoso.com"}
	in := "Resent-From: ops@contoso.com\nResent-To: oncall@contoso.com, root\nResent-Cc: audit@fabrikam.com\nResent-Bcc: hidden@fabrikam.com\n" +
		"From: Backup Job <backup@contoso.com>\nTo: original@contoso.com\nCc: also-original@contoso.com\nBcc: secret@fabrikam.com\nSubject: nightly backup\n\nall good\n"
	r := run(t, vars, in, "sendmail", "-t", "-i", "extra@contoso.com")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	_, m := queued(t, ctx, env.JS, 1)
	if want := []string{"oncall@contoso.com", "root@contoso.com", "audit@fabrikam.com", "hidden@fabrikam.com", "extra@contoso.com"}; !reflect.DeepEqual(m.To, want) {
		t.Fatalf("To %v, want %v", m.To, want)
	}
	rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: message.PolicyRewrite}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s := string(rendered.Data); strings.Contains(s, "hidden@") || strings.Contains(s, "secret@") || !strings.Contains(s, "Resent-To: ") {
		t.Fatalf("rendered:\n%s", s)
	}
	// A Resent- field without Resent- recipients: nobody, as Postfix.
	r = run(t, vars, "Resent-From: ops@contoso.com\nTo: original@contoso.com\n\nx\n", "sendmail", "-t")
	if r.code != exDataErr || !strings.Contains(r.stderr, "Resent-To, Resent-Cc and Resent-Bcc") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSendmailLongHeaderLine: a header line longer than SMTP carries
// (998 octets, RFC 5322 §2.1.1) with no white space to fold it at, as an
// alerting script writes it (a subject or X- field holding one long
// token, a To list without spaces, References without spaces), is still
// sent, as Postfix takes it, instead of exit 65 and the alert lost: the
// text reads back the same (encoded-words, RFC 2047 §6.2; FWS between
// addresses and between message ids, RFC 5322 §3.4, §3.6.4), and every
// rendered line is within 998. A structured field the relay may not
// rewrite is still refused, loudly.
func TestSendmailLongHeaderLine(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_DOMAIN": "contoso.com"}
	token := strings.Repeat("0123456789abcdef", 80) // 1280 octets, no space
	var to []string
	for i := range 80 {
		to = append(to, "ops"+strings.Repeat("x", i%7)+"-"+string(rune('a'+i%26))+"@contoso.com")
	}
	to = slices.Compact(to)
	refs := strings.Repeat("<1234567890.abcdefghij@web-3.contoso.com>", 30)
	in := "To: " + strings.Join(to, ",") + "\nSubject: disk full " + token + " on web-3\nX-Alert-Payload: " + token + "\nX-Alert-Name: =?utf-8?q?" + strings.Repeat("r=C3=A9sum=C3=A9", 100) + "?=\nReferences: " + refs + "\n\nbody\n"
	r := run(t, vars, in, "sendmail", "-t", "-i")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	_, m := queued(t, ctx, env.JS, 1)
	if !reflect.DeepEqual(m.To, to) {
		t.Fatalf("To %v, want %v", m.To, to)
	}
	rendered, err := message.Render(m, message.Sender{Mailbox: "alerts@contoso.com", Policy: message.PolicyRewrite}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(rendered.Data), "\r\n") {
		if len(line) > 998 {
			t.Fatalf("rendered line %d is %d octets", i+1, len(line))
		}
	}
	hdr := renderedHeader(t, rendered.Data)
	dec := new(mime.WordDecoder)
	for name, want := range map[string]string{"Subject": "disk full " + token + " on web-3", "X-Alert-Payload": token, "X-Alert-Name": strings.Repeat("résumé", 100)} {
		got, err := dec.DecodeHeader(hdr.Get(name))
		if err != nil || got != want {
			t.Fatalf("%s reads %q (%v), want %q", name, got, err, want)
		}
	}
	if got := strings.ReplaceAll(hdr.Get("References"), " ", ""); got != refs {
		t.Fatalf("References %q", hdr.Get("References"))
	}
	list, err := hdr.AddressList("To")
	if err != nil || len(list) != len(to) {
		t.Fatalf("To field %q: %v", hdr.Get("To"), err)
	}
	// A structured field with one word past 998: nothing the relay may
	// rewrite, refused with the field named.
	r = run(t, vars, "Content-ID: <"+token+"@contoso.com>\n\nx\n", "sendmail", "ops@contoso.com")
	if r.code != exDataErr || !strings.Contains(r.stderr, "Content-ID field") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSendmailLongFoldableAddressField: an address field past 998 octets
// that the worker folds at its spaces is queued byte for byte, not
// written anew (its display names re-encoded) by the mending of fields
// it could not fold.
func TestSendmailLongFoldableAddressField(t *testing.T) {
	var to []string
	for i := range 60 {
		to = append(to, fmt.Sprintf("=?windows-1252?Q?Caf=E9?= <ops%d@contoso.com>", i))
	}
	in := "To: " + strings.Join(to, ", ") + "\r\nSubject: x\r\n\r\nbody\r\n"
	m, err := buildSendmail(sendmailConfig{Account: "alerts", FromHeader: true}, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Raw) != in || len(m.To) != 60 {
		t.Fatalf("raw changed:\n got %q\nwant %q", m.Raw, in)
	}
}
