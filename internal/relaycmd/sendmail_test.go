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
