package relaycmd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/producer"
)

// relay sendmail is /usr/sbin/sendmail for hosts whose mail goes through
// Relay365: cron, mdadm, smartd, logwatch and scripts pipe one message
// into it, and it queues that message on mail.send.<account> as the SMTP
// front door (internal/ingress) does: raw, with the envelope recipients
// as To and a fresh message id (docs/design.md §10).

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
	NATS    natsClient
	Timeout time.Duration
	// Domain qualifies addresses without one (root becomes root@Domain),
	// as sendmail qualifies local names with its own domain: cron,
	// mdadm and smartd write "root", which Office 365 cannot deliver.
	Domain     string
	FromHeader bool   // -t: recipients from the To, Cc and Bcc fields (or Resent- ones), and the arguments
	IgnoreDots bool   // -i, -oi: a line of a single dot is text, not the end of the message
	Sender     string // -f, -r: not the envelope sender (always the mailbox), only a From line the message lacks
	// FullName is -F, or without it the NAME environment variable (as
	// Postfix's sendmail(1): "-F full_name ... This overrides the NAME
	// environment variable"): the display name of that From line, or
	// without -f of the mailbox's.
	FullName string
	Rcpts    []string
	// Spool is the directory a message NATS cannot take now is kept in
	// (spool.go), "" when off; used only when it exists.
	Spool string
	Queue bool // -q: publish what the spool holds, read no message
	SMTP  bool // -bs: SMTP on standard input and output (sendmail_smtp.go)
}

const sendmailUsage = `Usage: relay sendmail [-t] [-i] [-f FROM] [-F NAME] [--account A] [RECIPIENT...]
       relay sendmail -bs [--account A]
       relay sendmail -q

Reads one message on standard input, as /usr/sbin/sendmail does, and queues
it on mail.send.<account>. Prints nothing on success.

When NATS cannot take the message now and the spool directory exists
(--spool, default /var/spool/relay365; make it with
install -d -m 1733 /var/spool/relay365), the message is kept there and the
exit is 0. The next message queued, or -q, sends what the spool holds.

  -bs       SMTP on standard input and output (SwiftMailer, Symfony Mailer,
            Laravel): each message answered 250 queued, 451 try again,
            550 or 554 refused, 552 too large; the exit is 0 when the
            client quits
  -q        send what the spool holds (each file names its account), oldest
            first; read no message
  -t        recipients from the To, Cc and Bcc fields as well (Bcc is not sent);
            from Resent-To, Resent-Cc and Resent-Bcc instead when the message
            has Resent- fields
  -i, -oi   a line of a single "." does not end the message
  -f FROM   a From line for a message that has none (the relay sends as the
            account's mailbox; its From policy decides what becomes of it)
  -F NAME   the display name of that From line, or without -f of the
            account's mailbox, the From of a message that has none;
            without -F, the NAME environment variable (as Postfix's)
  accepted and ignored: -oem -oee -om -odi -odb and any other -oX, -B TYPE,
  -N DSN, -R RET, -V ENVID, -O OPT (but -O IgnoreDots), -A X, -C FILE, -h N,
  -L TAG, -X FILE, -v, -m, -n, -U, -G, -bm
  one-letter options may be given together, as getopt takes them: -ti

Exit codes (sysexits.h): 0 queued or kept in the spool, 64 usage, 65 the
message cannot be sent, 70 internal error, 75 NATS unreachable or the queue
full (try again later), 77 NATS refused the credentials or the account's
subject. With -q: 0 the spool sent, 75 NATS unreachable (the rest kept),
65 or 77 some messages could not be sent (renamed *.failed, named on stderr).

Long options take two dashes:
`

// runSendmail is relay sendmail. It prints nothing when the message is
// queued; every error carries its sysexits.h code (cli.ExitError).
func runSendmail(ctx context.Context, args []string, env Env) error {
	c, err := parseSendmail(args, env)
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	if err != nil {
		return cli.ExitError{Code: exUsage, Err: err}
	}
	// The producer seed of a relay on this host, when no credentials are
	// named; unreadable credential files are found before the message is
	// read.
	c.NATS.as(roles.Producer)
	if _, err := c.NATS.Opts.Options(); err != nil {
		return cli.ExitError{Code: exUsage, Err: err}
	}
	if c.Queue {
		return runQueue(ctx, c, env)
	}
	if c.SMTP {
		return runSMTPStdio(ctx, c, env)
	}
	data, err := readSendmail(env.Stdin, c.IgnoreDots)
	if err != nil {
		return cli.ExitError{Code: exSoftware, Err: fmt.Errorf("read the message: %w", err)}
	}
	if len(data) > message.MaxSize {
		return cli.ExitError{Code: exDataErr, Err: fmt.Errorf("the message is larger than %d bytes (35 MB), what Office 365 accepts (reading stopped there)", message.MaxSize)}
	}
	m, err := buildSendmail(c, data)
	if err != nil {
		return cli.ExitError{Code: exDataErr, Err: err}
	}
	return queueSendmail(ctx, c, m, env.Stderr)
}

// queueSendmail publishes m (publishSendmail) or, when NATS cannot take
// it now, keeps it in the spool. Its error is a cli.ExitError.
func queueSendmail(ctx context.Context, c sendmailConfig, m *message.Message, stderr io.Writer) error {
	err := publishSendmail(ctx, c, m, stderr)
	if ee := (cli.ExitError{}); errors.As(err, &ee) && ee.Code == exTempFail {
		if ctx.Err() != nil {
			// Interrupted (SIGINT, SIGTERM end Main's context): the
			// caller asked that the message not be sent, as an
			// interrupted sendmail(8) or Postfix sendmail drops it. Kept
			// in the spool it would be sent later after an exit 0, and
			// a caller killed by timeout(1) that sends again would have
			// it twice, under two ids.
			return cli.ExitError{Code: exTempFail, Err: fmt.Errorf("interrupted: %w; not kept in the spool", err)}
		}
		return keepInSpool(c, m, err)
	}
	return err
}

// publishSendmail queues the message within c.Timeout, connecting
// included, and says with the exit code whether trying again can help.
// Once it is queued, what the spool holds is flushed on the same
// connection, within another c.Timeout (drainSpool), which changes
// nothing of the answer.
//
// It publishes through the producer package, so a message over
// message.InlineMax has its content stored in the body store first.
func publishSendmail(ctx context.Context, c sendmailConfig, m *message.Message, stderr io.Writer) error {
	pctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	sc, err := dialSendmail(c)
	if err != nil {
		return err
	}
	defer sc.close()
	if err := sc.publish(pctx, m); err != nil {
		return err
	}
	drainSpool(ctx, sc, c.Spool, c.Timeout, stderr)
	return nil
}

// sendmailConn is relay sendmail's connection to NATS, as the producer
// role, and the producer that publishes on it: one message, or a spool
// of them (spool.go).
type sendmailConn struct {
	nc      *nats.Conn
	p       *producer.Producer
	timeout time.Duration // --timeout, named in the error when JetStream did not answer

	mu     sync.Mutex
	refuse context.CancelCauseFunc // ends the publish under way; nil between publishes
}

// dialSendmail connects as the producer role. Its error is a
// cli.ExitError: 64 for options that cannot work, 77 when NATS refused
// the credentials, 75 when NATS is unreachable.
func dialSendmail(c sendmailConfig) (*sendmailConn, error) {
	sc := &sendmailConn{timeout: c.Timeout}
	nc, err := c.NATS.connect("relay-sendmail", roles.Producer,
		nats.Timeout(min(c.Timeout, 5*time.Second)),
		// A publish the server does not permit gets no reply, only an
		// asynchronous -ERR: end the wait with it instead of at the timeout.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				sc.mu.Lock()
				if sc.refuse != nil {
					sc.refuse(err)
				}
				sc.mu.Unlock()
			}
		}))
	switch {
	case cli.IsUsage(err):
		return nil, cli.ExitError{Code: exUsage, Err: err}
	case refused(err):
		return nil, cli.ExitError{Code: exNoPerm, Err: err}
	case err != nil: // refused, dead, unknown or silent: NATS is unreachable
		return nil, cli.ExitError{Code: exTempFail, Err: err}
	}
	p, err := producer.New(nc)
	if err != nil {
		nc.Close()
		return nil, cli.ExitError{Code: exSoftware, Err: err}
	}
	sc.nc, sc.p = nc, p
	return sc, nil
}

func (sc *sendmailConn) close() { sc.nc.Close() }

// publish queues m within ctx. Its error is a cli.ExitError whose code
// says whether trying again can help (sendmailCode).
func (sc *sendmailConn) publish(ctx context.Context, m *message.Message) error {
	ctx, refuse := context.WithCancelCause(ctx)
	defer refuse(nil)
	sc.mu.Lock()
	sc.refuse = refuse
	sc.mu.Unlock()
	defer func() {
		sc.mu.Lock()
		sc.refuse = nil
		sc.mu.Unlock()
	}()
	_, err := sc.p.Publish(ctx, m)
	if err == nil {
		return nil
	}
	var tl *producer.TooLarge
	if message.IsInvalid(err) || errors.As(err, &tl) {
		// Over the account's size limit included: never sendable as it is.
		return cli.ExitError{Code: exDataErr, Err: fmt.Errorf("not queued: %w", err)}
	}
	if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	switch {
	case queue.IsFull(err):
		err = fmt.Errorf("the MAIL stream is full: %w", err)
	case errors.Is(err, context.DeadlineExceeded):
		err = fmt.Errorf("JetStream did not answer within --timeout %v (is the MAIL stream there? relay serve creates it): %w", sc.timeout, err)
	}
	return cli.ExitError{Code: sendmailCode(err), Err: fmt.Errorf("not queued: %w", err)}
}

// refused reports whether NATS refused the credentials or the subject.
func refused(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		errors.Is(err, nats.ErrPermissionViolation)
}

// sendmailCode is the exit code for a failed publish.
func sendmailCode(err error) int {
	switch {
	case refused(err):
		return exNoPerm
	case errors.Is(err, nats.ErrMaxPayload):
		return exDataErr // larger than the server's max_payload: no retry helps
	case tryAgainLater(err):
		return exTempFail
	}
	return exSoftware
}

// tryAgainLater reports whether a failed publish may pass when tried
// again later: the MAIL stream full, NATS gone or silent, JetStream
// without a stream or a leader (queue.Publish retries those until the
// timeout). relay sendmail and relay publish exit EX_TEMPFAIL (75) then.
func tryAgainLater(err error) bool {
	var apiErr *jetstream.APIError
	return queue.IsFull(err) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoServers) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.As(err, &apiErr) && apiErr.Code == 503
}

// helpDefault is " (default X)" for a flag with a default, as
// flag.PrintDefaults writes it (strings quoted), and "" for one without.
func helpDefault(f *flag.Flag, typeName string) string {
	switch f.DefValue {
	case "", "0", "0s", "false":
		return ""
	}
	if typeName == "string" {
		return fmt.Sprintf(" (default %q)", f.DefValue)
	}
	return fmt.Sprintf(" (default %s)", f.DefValue)
}

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
			fmt.Fprintf(fs.Output(), "  --%s %s\n    \t%s%s\n", f.Name, name, usage, helpDefault(f, name))
		})
	}
	fs.StringVar(&c.Account, "account", envOr(env, "RELAY_ACCOUNT", ""), "account alias to send through (env RELAY_ACCOUNT)")
	c.NATS.register(fs, env)
	fs.StringVar(&c.Domain, "domain", envOr(env, "RELAY_SENDMAIL_DOMAIN", ""), "domain for addresses without one: root becomes root@DOMAIN (env RELAY_SENDMAIL_DOMAIN)")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "give up connecting and publishing after this long (exit 75)")
	fs.StringVar(&c.Spool, "spool", envOr(env, "RELAY_SENDMAIL_SPOOL", defaultSpool), "keep a message NATS cannot take now in this directory, if it exists, and exit 0; off: never (env RELAY_SENDMAIL_SPOOL)")

	var long []string
	fullName := false // -F given, even empty: it overrides NAME
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		// -h alone is help; with more, sendmail(8)'s "-h N" hop count,
		// which Postfix ignores: taken for help, the message would be
		// dropped with exit 0.
		if a == "--help" || a == "-h" && len(args) == 1 {
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
		// One-letter options cluster as getopt(3), which both sendmails
		// use, has them (-ti, -tf cron@x, -ioem): the letters that take a
		// value take the rest of the argument, or the next one.
		for opts := a[1:]; opts != ""; {
			letter, value := opts[0], opts[1:]
			switch letter {
			case 't', 'i', 'v', 'm', 'n', 'U', 'G':
				// -v asks for a transcript (there is none to show); -m
				// (mailx's metoo), -n (no aliasing), -U (initial
				// submission), -G (gateway): ignored, as Postfix ignores
				// them.
				c.FromHeader = c.FromHeader || letter == 't'
				c.IgnoreDots = c.IgnoreDots || letter == 'i'
				opts = value
				continue
			case 'q':
				// sendmail(8)'s -q processes the queue; -q1h (every hour),
				// -qI, -qR and -qS (part of it) are a queue daemon's.
				if value != "" {
					return c, cli.Usagef("unknown option %s: only -q alone (send what the spool holds, once) is supported", a)
				}
				c.Queue = true
				opts = ""
				continue
			case 'b', 'B', 'f', 'r', 'F', 'h', 'N', 'R', 'V', 'o', 'O', 'A', 'C', 'L', 'X':
			default:
				return c, unknownOption(a, fs)
			}
			opts = ""
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
				// -bs is SMTP on stdin and stdout, which PHP's SwiftMailer,
				// Symfony Mailer and Laravel use by default
				// (sendmail_smtp.go). The other modes (-bp the queue, -bi
				// aliases, -bd a daemon, -bv verify) are not a relay
				// client's to play.
				switch value {
				case "m":
				case "s":
					c.SMTP = true
				default:
					return c, cli.Usagef("-b%s: only -bm (read a message on stdin) and -bs (SMTP on stdin) are supported", value)
				}
			case 'f', 'r': // -r is sendmail's obsolete spelling of -f
				c.Sender = value
			case 'F':
				c.FullName, fullName = value, true
			case 'o':
				// -oi is IgnoreDots; sendmail ignores options it does not
				// know, and -oem, -oee, -om, -odi, -odb (error reporting,
				// me too, delivery mode) mean nothing once the message is in
				// JetStream.
				c.IgnoreDots = c.IgnoreDots || value == "i"
			case 'O':
				// Sendmail's long form of -o: -O IgnoreDots[=true].
				name, v, _ := strings.Cut(value, "=")
				if strings.EqualFold(strings.TrimSpace(name), "IgnoreDots") {
					switch strings.ToLower(strings.TrimSpace(v)) {
					case "", "t", "true", "y", "yes":
						c.IgnoreDots = true
					}
				}
			}
			// -B (body type), -N, -R, -V (DSN notify, return, envelope id):
			// accepted and ignored; the relay sends 8BITMIME where Office 365
			// takes it and asks for no DSNs. -A (submission or relay
			// configuration), -C (sendmail.cf), -h (hop count), -L (log
			// label), -X (traffic log): ignored, as Postfix ignores them.
		}
	}
	c.Rcpts = append([]string(nil), args[i:]...)
	if err := parse(fs, long); err != nil {
		return c, err
	}
	if c.Spool == "off" {
		c.Spool = ""
	}
	if !fullName {
		// Postfix's sendmail(1), ENVIRONMENT: "NAME: The sender full
		// name. This is used only with messages that have no From:
		// message header." (-F "overrides the NAME environment
		// variable"); Sendmail's sets its $x from NAME, then from -F.
		c.FullName = envOr(env, "NAME", "")
	}
	switch {
	case c.Account == "" && !c.Queue: // -q: each spooled message names its account
		return c, cli.Usagef("no account: set RELAY_ACCOUNT or give --account")
	case c.Account != "" && !message.ValidAccount(c.Account):
		return c, cli.Usagef("--account %q: want an account alias (lower-case letters, digits, '-' and '_')", c.Account)
	case c.Timeout <= 0:
		return c, cli.Usagef("--timeout %v: want a positive duration", c.Timeout)
	case c.Queue && len(c.Rcpts) > 0:
		return c, cli.Usagef("-q sends what the spool holds and takes no recipients")
	case c.Queue && c.Spool == "":
		return c, cli.Usagef("-q: the spool is off (--spool, RELAY_SENDMAIL_SPOOL)")
	case c.SMTP && c.Queue:
		return c, cli.Usagef("-bs and -q: give one")
	case c.SMTP && len(c.Rcpts) > 0:
		return c, cli.Usagef("-bs takes the recipients from RCPT TO, not as arguments")
	case !c.Queue && !c.SMTP && !c.FromHeader && len(c.Rcpts) == 0:
		return c, cli.Usagef("no recipients: give them as arguments, or -t to take them from the To, Cc and Bcc fields")
	}
	if c.Spool != "" {
		// A directory that is not there only leaves the spool unused;
		// a file in its place is a mistake to say at once.
		if fi, err := os.Stat(c.Spool); err == nil && !fi.IsDir() {
			return c, spoolNotDir(c.Spool)
		}
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

// readSendmail reads the message: to the end of the input, but never
// more than one byte past what Office 365 takes (that byte says the
// message is too large), and without ignoreDots (-i, -oi) only up to the
// first line of a single dot, which is not read past. sendmail(8) and
// Postfix's sendmail(1) stop reading there and send: someone typing a
// message at a terminal ends it with "." and sendmail returns, where
// reading on to the end of the input would wait for a ^D they were never
// told to type, and a program that writes the dot and then waits for
// sendmail before closing the pipe would wait for ever.
func readSendmail(r io.Reader, ignoreDots bool) ([]byte, error) {
	r = io.LimitReader(r, message.MaxSize+1)
	if ignoreDots {
		return io.ReadAll(r)
	}
	// bufio reads what each Read returns (a terminal's line, what a pipe
	// holds) and asks for more only until a line ends, so nothing after
	// the dot's line is waited for.
	br := bufio.NewReader(r)
	var data []byte
	for mid := false; ; {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			data = append(data, line...) // a long line: not a dot, read on
			mid = true
			continue
		}
		if !mid && string(bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))) == "." {
			return data, nil
		}
		mid = false
		data = append(data, line...)
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// buildSendmail turns the bytes read into the message to queue, as the
// SMTP front door does (raw, envelope recipients as To, a fresh id). The
// header is mended first as sendmail would (tidyHeader); every error
// means the message can never be sent as it is (exit 65).
func buildSendmail(c sendmailConfig, data []byte) (*message.Message, error) {
	raw, err := message.NormalizeRaw(data) // CRLF; refuses a NUL
	if err != nil {
		return nil, err
	}
	raw = message.DropFromLines(raw)
	if len(raw) == 0 {
		raw = []byte("\r\n") // an empty message still has an (empty) header and body
	}
	raw = tidyHeader(raw, c.Domain)
	raw = encodeLongLines(raw)
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("the header does not parse: %v", err)
	}
	// -f is never the envelope sender: the relay sends as the account's
	// mailbox. It only gives a message without a From field one, which
	// the account's From policy then rewrites (the address goes to
	// Reply-To) or refuses. The null sender ("<>") gives none; any
	// other -f that is not one address is refused, as a From field
	// would be, rather than dropped without a word.
	//
	// -F alone is the display name of the From the worker writes, the
	// mailbox (message.MailboxPlaceholder stands for it): Postfix's
	// sendmail(1) uses -F "only with messages that have no From: message
	// header", as the full name of the From it generates, and so does
	// sendmail(8).
	if len(msg.Header["From"]) == 0 {
		switch {
		case c.Sender != "" && c.Sender != "<>":
			from, err := parseAddresses(c.Sender, c.Domain)
			if err == nil && len(from) != 1 {
				err = fmt.Errorf("%q is %d addresses, want one", c.Sender, len(from))
			}
			if err != nil {
				return nil, fmt.Errorf("-f: %v", err)
			}
			from[0].Name = c.FullName
			raw = append([]byte("From: "+from[0].String()+"\r\n"), raw...)
		case c.FullName != "":
			from := &mail.Address{Name: c.FullName, Address: message.MailboxPlaceholder}
			raw = append([]byte("From: "+from.String()+"\r\n"), raw...)
		}
	}
	// The worker refuses a From or Sender that is not an address; say
	// now, and say what to do when all it lacks is a domain.
	for _, h := range []string{"From", "Sender"} {
		for _, v := range msg.Header[h] {
			if _, err := parseAddresses(v, c.Domain); err != nil {
				return nil, fmt.Errorf("%s field: %v", h, err)
			}
		}
	}
	var rcpts []string
	seen := map[string]bool{}
	add := func(what, list string) error {
		addrs, err := parseAddresses(list, c.Domain)
		if err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		for _, a := range addrs {
			if k := strings.ToLower(a.Address); !seen[k] {
				seen[k] = true
				rcpts = append(rcpts, a.Address)
			}
		}
		return nil
	}
	// The To, Cc and Bcc fields, or the Resent- ones alone when the
	// message is being resent (message.RecipientFields, as the worker
	// reads a producer's raw message without recipients).
	fields := message.RecipientFields(msg.Header)
	if c.FromHeader {
		// -t: the To, Cc and Bcc fields (or Resent- ones), plus the
		// arguments (as Postfix does; sendmail 8 would drop the
		// arguments instead). The Bcc and Resent-Bcc fields themselves
		// are removed when the worker renders the message.
		for _, h := range fields {
			for _, v := range msg.Header[h] {
				if strings.TrimSpace(v) == "" {
					continue // "Bcc:" with nobody: legal, names no one
				}
				if err := add(h+" field", v); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, r := range c.Rcpts {
		if err := add("recipient", r); err != nil {
			return nil, err
		}
	}
	if len(rcpts) == 0 {
		return nil, fmt.Errorf("no recipients in the %s, %s and %s fields (-t)", fields[0], fields[1], fields[2])
	}
	m := &message.Message{ID: message.NewID(), Account: c.Account, To: rcpts, Raw: raw}
	// Validated and rendered as the worker will, but for the account's
	// From policy (message.Check): what no account could send (a From
	// that is not one address, too large once rendered) is refused now,
	// to a caller that can still say so, instead of being dead-lettered
	// later.
	if err := message.Check(m); err != nil {
		return nil, err
	}
	return m, nil
}

// parseAddresses parses an address list (an argument, a field's value),
// qualifying addresses without a domain with domain when that is what
// keeps them from parsing.
func parseAddresses(s, domain string) ([]*mail.Address, error) {
	list, err := message.ReadAddressList(s)
	if err == nil {
		return list, nil
	}
	if domain != "" {
		if list, err := message.ReadAddressList(qualify(s, domain)); err == nil {
			return list, nil
		}
	} else if _, err := message.ReadAddressList(qualify(s, "relay365.invalid")); err == nil {
		return nil, fmt.Errorf("%q has no domain: set RELAY_SENDMAIL_DOMAIN or give --domain (root becomes root@DOMAIN), or give a full address", s)
	}
	return nil, fmt.Errorf("%q: %v", s, err)
}

// maxLine is the longest line SMTP carries, CRLF not counted (RFC 5322
// §2.1.1, RFC 5321 §4.5.3.1.6).
const maxLine = 998

// encodeLongLines sends the body of a single-part CRLF message
// quoted-printable when a line of it is longer than SMTP carries: a job's
// JSON or log line would otherwise make the message unsendable, where
// Postfix and Sendmail accept it (and break the line). The body decodes
// to what was read; the Content-Transfer-Encoding field is replaced, and
// MIME-Version added when missing so the encoding is honoured. A
// multipart message, or one already encoded, is left for the checks to
// refuse: its parts are not the relay's to rewrite.
func encodeLongLines(raw []byte) []byte {
	header, body, found := bytes.Cut(raw, []byte("\r\n\r\n"))
	if bytes.HasPrefix(raw, []byte("\r\n")) {
		header, body, found = nil, raw[2:], true
	} else {
		header = append(header, "\r\n"...)
	}
	if !found || !hasLongLine(body) {
		return raw
	}
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), header...), "\r\n"...)))
	if err != nil {
		return raw
	}
	if ct := msg.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "message/") {
			return raw
		}
	}
	switch strings.ToLower(strings.TrimSpace(msg.Header.Get("Content-Transfer-Encoding"))) {
	case "", "7bit", "8bit", "binary":
	default:
		return raw
	}
	var out bytes.Buffer
	skip := false // in a Content-Transfer-Encoding field, its continuation lines included
	for line := range bytes.Lines(header) {
		if line[0] != ' ' && line[0] != '\t' {
			name, _, _ := bytes.Cut(line, []byte(":"))
			skip = strings.EqualFold(strings.TrimSpace(string(name)), "Content-Transfer-Encoding")
		}
		if !skip {
			out.Write(line)
		}
	}
	if msg.Header.Get("Mime-Version") == "" {
		out.WriteString("MIME-Version: 1.0\r\n")
	}
	// Without a Content-Type the body would now read as us-ascii (RFC
	// 2045 §5.2), where before it went as 8-bit octets a reader could
	// take for UTF-8; say what it is when it is valid UTF-8.
	if msg.Header.Get("Content-Type") == "" && bytes.ContainsFunc(body, func(r rune) bool { return r >= utf8.RuneSelf }) && utf8.Valid(body) {
		out.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	}
	out.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
	w := quotedprintable.NewWriter(&out)
	w.Write(body) // a bytes.Buffer does not fail
	w.Close()
	return out.Bytes()
}

// hasLongLine reports whether a CRLF text has a line longer than maxLine.
func hasLongLine(b []byte) bool {
	for line := range bytes.Lines(b) {
		if len(bytes.TrimSuffix(line, []byte("\r\n"))) > maxLine {
			return true
		}
	}
	return false
}

// addressFields are the header fields that hold addresses (RFC 5322
// §3.6.2, §3.6.3, §3.6.6); tidyHeader qualifies them.
var addressFields = map[string]bool{"From": true, "Sender": true, "Reply-To": true, "To": true, "Cc": true, "Bcc": true,
	"Resent-From": true, "Resent-Sender": true, "Resent-To": true, "Resent-Cc": true, "Resent-Bcc": true}

// tidyHeader mends a CRLF message's header the way sendmail does before
// it queues, and leaves everything else byte for byte:
//   - a field name followed by white space before its colon (RFC 5322
//     §4.5.3's obsolete syntax) is written without it;
//   - a line that is not a header field ends the header (sendmail and
//     Postfix both read it so): "echo disk full | sendmail root" sends
//     "disk full" as the body, behind the blank line it lacked;
//   - with a domain, an address field that does not parse because an
//     address has no domain is written again with the addresses
//     qualified. cronie writes From: "(Cron Daemon)" <root> and To: root,
//     mdadm From: mdadm monitoring <root>; sendmail appends its own
//     domain to such local names, and net/mail, the worker and Office 365
//     accept only full addresses;
//   - a field with a line longer than SMTP carries (998 octets) that the
//     worker could not fold, its one word too long, is written again
//     folded: an address field with a fold after each comma, References
//     and In-Reply-To with white space between their message ids, an
//     unstructured field (Subject, X-...) with its long words as RFC 2047
//     encoded-words (message.MendLongField). Other structured fields are
//     left for message.Check to refuse.
func tidyHeader(raw []byte, domain string) []byte {
	var out bytes.Buffer
	// "Subject : x": white space between a name and its colon is RFC
	// 5322's obsolete syntax (§4.5.3), which a receiver must accept (§4)
	// and Postfix's sendmail does; net/mail, the worker and Office 365
	// would not, and the header would end there. It is written again
	// without the space, as §4 asks a generator to; and a line that is not
	// a field ends the header (message.StartBody). Both as the front door.
	rest := message.ReadAsSendmail(raw)
	for len(rest) > 0 && !bytes.HasPrefix(rest, []byte("\r\n")) {
		end := len(rest) // the field: its line and the continuation lines after it
		for i := 0; i < len(rest); {
			j := bytes.Index(rest[i:], []byte("\r\n"))
			if j < 0 {
				break
			}
			i += j + 2
			if i == len(rest) || (rest[i] != ' ' && rest[i] != '\t') {
				end = i
				break
			}
		}
		field := rest[:end]
		name, value, _ := bytes.Cut(field, []byte(":")) // a field: StartBody ended the header before any other line
		rest = rest[end:]
		isAddr := addressFields[textproto.CanonicalMIMEHeaderKey(string(name))]
		v := strings.TrimSpace(strings.ReplaceAll(string(value), "\r\n", ""))
		if domain != "" && isAddr {
			if _, err := message.ReadAddressList(v); err != nil {
				if list, err := message.ReadAddressList(qualify(v, domain)); err == nil {
					writeAddressField(&out, string(name), list)
					continue
				}
			}
		}
		if hasLongLine(field) {
			// A line past 998 octets (RFC 5322 §2.1.1) the worker could
			// not fold, one word too long: Postfix takes it, and an
			// alert would be lost as exit 65. Written anew where no
			// reader sees a difference; else left for message.Check to
			// refuse, the field named.
			if mended, ok := message.MendLongField(field); ok { // as it is when the worker folds it
				out.Write(mended)
				continue
			}
			if list, err := message.ReadAddressList(v); isAddr && err == nil && v != "" {
				writeAddressField(&out, string(name), list) // FWS after each comma, RFC 5322 §3.4
				continue
			}
		}
		out.Write(field)
	}
	out.Write(rest)
	return out.Bytes()
}

// writeAddressField writes "Name: a, b\r\n", folded before an address
// that would take the line past 78 characters (RFC 5322 §2.1.1).
func writeAddressField(out *bytes.Buffer, name string, list []*mail.Address) {
	out.WriteString(name + ":")
	n := len(name) + 1
	for i, a := range list {
		s := a.String()
		if i > 0 {
			out.WriteString(",")
			n++
			if n+1+len(s) > 78 {
				out.WriteString("\r\n")
				n = 0
			}
		}
		out.WriteString(" " + s)
		n += 1 + len(s)
	}
	out.WriteString("\r\n")
}

// qualify appends "@"+domain to each address of the list s that has no
// domain: root, root (Cron Daemon), "(Cron Daemon)" <root>. It only edits
// text (quoted strings and comments untouched); the caller parses the
// result.
func qualify(s, domain string) string {
	plain := plainBytes(s)
	var parts []string
	start, angle := 0, false
	for i := 0; i <= len(s); i++ {
		if i < len(s) { // a comma ends an address unless quoted, in a comment or in <>
			if plain[i] && s[i] == '<' {
				angle = true
			}
			if plain[i] && s[i] == '>' {
				angle = false
			}
			if !plain[i] || s[i] != ',' || angle {
				continue
			}
		}
		parts = append(parts, qualifyOne(s[start:i], plain[start:i], domain))
		start = i + 1
	}
	return strings.Join(parts, ",")
}

// qualifyOne qualifies one address of a list (see qualify).
func qualifyOne(e string, plain []bool, domain string) string {
	lt, gt, last := -1, -1, -1
	for i := 0; i < len(e); i++ {
		if !plain[i] {
			continue
		}
		switch e[i] {
		case '@', ':':
			return e // has a domain, or is a group: the parser's to judge
		case '<':
			if lt < 0 {
				lt = i
			}
		case '>':
			if lt >= 0 && gt < 0 {
				gt = i
			}
		}
		if e[i] != ' ' && e[i] != '\t' {
			last = i
		}
	}
	switch {
	case lt >= 0 && gt > lt+1: // Name <root>
		return e[:gt] + "@" + domain + e[gt:]
	case lt < 0 && last >= 0: // root, root (Cron Daemon)
		return e[:last+1] + "@" + domain + e[last+1:]
	}
	return e
}

// plainBytes marks the bytes of s that are outside quoted strings and
// comments (RFC 5322 §3.2.4, §3.2.2), where an address's own characters are.
func plainBytes(s string) []bool {
	plain := make([]bool, len(s))
	quoted, escaped, comment := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case (quoted || comment > 0) && c == '\\':
			escaped = true
		case quoted:
			quoted = c != '"'
		case comment > 0:
			if c == '(' {
				comment++
			} else if c == ')' {
				comment--
			}
		case c == '"':
			quoted = true
		case c == '(':
			comment = 1
		default:
			plain[i] = true
		}
	}
	return plain
}
