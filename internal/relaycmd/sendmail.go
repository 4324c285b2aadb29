package relaycmd

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// relay sendmail is /usr/sbin/sendmail for hosts whose mail goes through
// Relay365: cron, mdadm, smartd, logwatch and scripts pipe one message
// into it, and it queues that message on mail.send.<account> as the SMTP
// front door (internal/ingress) does: raw, with the envelope recipients
// as To and a fresh message id.

// Exit codes of relay sendmail. They are sysexits.h's (sysexits(3)), as
// sendmail(8) returns them ("RETURN VALUES") and as its callers read them:
// cron and mail(1) report any code but 0, and a caller that can retry
// (a script, a monitoring agent) retries EX_TEMPFAIL only. So they differ
// on purpose from the 0/1/2 of the other relay commands (internal/cli).
const (
	exUsage    = 64 // EX_USAGE: bad flags, no account, no recipients without -t
	exDataErr  = 65 // EX_DATAERR: the message can never be sent as it is
	exSoftware = 70 // EX_SOFTWARE: anything unexpected
	exTempFail = 75 // EX_TEMPFAIL: NATS or JetStream unreachable, silent or full: try again later
	exNoPerm   = 77 // EX_NOPERM: NATS refused the credentials or the subject
)

// sendmailConfig is one relay sendmail invocation.
type sendmailConfig struct {
	Account string
	NATSURL string
	NATS    queue.ConnectOptions
	Timeout time.Duration
	// Domain qualifies addresses without one (root becomes root@Domain),
	// as sendmail qualifies local names with its own domain: cron,
	// mdadm and smartd write "root", which Office 365 cannot deliver.
	Domain     string
	FromHeader bool   // -t: recipients from the To, Cc and Bcc fields, and the arguments
	IgnoreDots bool   // -i, -oi: a line of a single dot is text, not the end of the message
	Sender     string // -f, -r: not the envelope sender (always the mailbox), only a From line the message lacks
	FullName   string // -F: the display name of that From line
	Rcpts      []string
}

const sendmailUsage = `Usage: relay sendmail [-t] [-i] [-f FROM] [-F NAME] [--account A] [RECIPIENT...]

Reads one message on standard input, as /usr/sbin/sendmail does, and queues
it on mail.send.<account>. Prints nothing on success.

  -t        recipients from the To, Cc and Bcc fields as well (Bcc is not sent)
  -i, -oi   a line of a single "." does not end the message
  -f FROM   a From line for a message that has none (the relay sends as the
            account's mailbox; its From policy decides what becomes of it)
  -F NAME   the display name of that From line
  accepted and ignored: -oem -oee -om -odi -odb and any other -oX, -B TYPE,
  -N DSN, -R RET, -V ENVID, -v, -bm

Exit codes (sysexits.h): 0 queued, 64 usage, 65 the message cannot be sent,
70 internal error, 75 NATS unreachable or the queue full (try again later),
77 NATS refused the credentials.

Long options take two dashes:
`

// parseSendmail reads sendmail's command line by hand: the flag package
// cannot read sendmail's attached values (-fuser@x, -FCronDaemon, -oi,
// -B8BITMIME). Options end at "--" or at the first recipient, as POSIX
// getopt and Postfix's sendmail(1) have it. Long options (--account,
// --nats-url, the NATS options) are handed to a flag set as usual.
func parseSendmail(args []string, env Env) (sendmailConfig, error) {
	var c sendmailConfig
	fs := newFlags("sendmail", env)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), sendmailUsage)
		fs.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(fs.Output(), "  --%s %s\n    \t%s\n", f.Name, name, usage)
		})
	}
	fs.StringVar(&c.Account, "account", envOr(env, "RELAY_ACCOUNT", ""), "account alias to send through (env RELAY_ACCOUNT)")
	fs.StringVar(&c.NATSURL, "nats-url", envOr(env, "RELAY_NATS_URL", queue.DefaultURL), "NATS server URL (env RELAY_NATS_URL)")
	c.NATS.Register(fs, env.Getenv)
	fs.StringVar(&c.Domain, "domain", envOr(env, "RELAY_SENDMAIL_DOMAIN", ""), "domain for addresses without one: root becomes root@DOMAIN (env RELAY_SENDMAIL_DOMAIN)")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "give up connecting and publishing after this long (exit 75)")

	var long []string
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if a == "-h" || a == "--help" {
			fs.Usage()
			return c, flag.ErrHelp
		}
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, hasValue := strings.Cut(name, "=")
			f := fs.Lookup(name)
			if f == nil {
				return c, cli.Usagef("unknown option %s", a)
			}
			long = append(long, a)
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && b.IsBoolFlag()) {
				if i+1 == len(args) {
					return c, cli.Usagef("%s needs a value", a)
				}
				i++
				long = append(long, args[i])
			}
			continue
		}
		if len(a) < 2 || a[0] != '-' {
			break // the first recipient
		}
		letter, value := a[1], a[2:]
		switch letter {
		case 't', 'i', 'v': // -v asks for sendmail's transcript: there is none to show
			if value != "" {
				return c, cli.Usagef("unknown option %s (give one-letter options apart: -t -i)", a)
			}
			c.FromHeader = c.FromHeader || letter == 't'
			c.IgnoreDots = c.IgnoreDots || letter == 'i'
			continue
		case 'b', 'B', 'f', 'r', 'F', 'N', 'R', 'V', 'o':
		default:
			return c, unknownOption(a, fs)
		}
		// These take a value, attached (-fuser) or as the next argument.
		if value == "" {
			if i+1 == len(args) {
				return c, cli.Usagef("-%c needs a value", letter)
			}
			i++
			value = args[i]
		}
		switch letter {
		case 'b':
			// -bm (deliver a message) is what sendmail does by default;
			// the other modes (-bs SMTP on stdin, -bp the queue, -bi
			// aliases, -bd a daemon) are not a relay client's to play.
			if value != "m" {
				return c, cli.Usagef("-b%s: only -bm (read a message on stdin) is supported; for SMTP use the relay's SMTP front door (relay serve --smtp-listen)", value)
			}
		case 'f', 'r': // -r is sendmail's obsolete spelling of -f
			c.Sender = value
		case 'F':
			c.FullName = value
		case 'o':
			// -oi is IgnoreDots; sendmail ignores options it does not
			// know, and -oem, -oee, -om, -odi, -odb (error reporting,
			// me too, delivery mode) mean nothing once the message is in
			// JetStream.
			c.IgnoreDots = c.IgnoreDots || value == "i"
		}
		// -B (body type), -N, -R, -V (DSN notify, return, envelope id):
		// accepted and ignored; the relay sends 8BITMIME where Office 365
		// takes it and asks for no DSNs.
	}
	c.Rcpts = append([]string(nil), args[i:]...)
	if err := parse(fs, long); err != nil {
		return c, err
	}
	switch {
	case c.Account == "":
		return c, cli.Usagef("no account: set RELAY_ACCOUNT or give --account")
	case !message.ValidAccount(c.Account):
		return c, cli.Usagef("--account %q: want an account alias (lower-case letters, digits, '-' and '_')", c.Account)
	case c.Timeout <= 0:
		return c, cli.Usagef("--timeout %v: want a positive duration", c.Timeout)
	case !c.FromHeader && len(c.Rcpts) == 0:
		return c, cli.Usagef("no recipients: give them as arguments, or -t to take them from the To, Cc and Bcc fields")
	}
	c.Domain = strings.TrimPrefix(c.Domain, "@")
	if c.Domain != "" {
		if _, err := message.ParseAddress("domain", "postmaster@"+c.Domain); err != nil {
			return c, cli.Usagef("--domain %q: want a domain such as contoso.com", c.Domain)
		}
	}
	return c, nil
}

// unknownOption is the usage error for a - option sendmail's callers do
// not use; a long option given with one dash gets a hint.
func unknownOption(a string, fs *flag.FlagSet) error {
	name, _, _ := strings.Cut(a[1:], "=")
	if fs.Lookup(name) != nil {
		return cli.Usagef("unknown option %s (long options take two dashes: -%s)", a, a)
	}
	return cli.Usagef("unknown option %s", a)
}
