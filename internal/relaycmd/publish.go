package relaycmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"time"

	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/roles"
	"relay365/producer"
)

type publishConfig struct {
	NATS     natsClient
	File     string
	HTMLFile string
	Timeout  time.Duration
	JSON     bool
	Msg      message.Message
}

// runPublish is relay publish. It exits 75 (exTempFail) when trying
// again later may pass (tryAgainLater: NATS unreachable or silent, the MAIL stream full
// or without a leader, no answer within --timeout): EX_TEMPFAIL of
// sysexits.h, as relay sendmail returns, so a script can tell "retry"
// from "this will never be queued" (1) and "fix the command" (2).
// Publishing again is safe: the message's id makes a second copy a
// duplicate. An interruption (ctx ended: Ctrl-C, SIGTERM) is not one of
// those: it exits 130, as for any command (cli.Dispatch), and a wrapper
// that tries again on 75 would send what the person stopped.
func runPublish(ctx context.Context, args []string, env Env) error {
	err := publishCommand(ctx, args, env)
	if err != nil && ctx.Err() == nil && !cli.IsUsage(err) && !refused(err) && !errors.Is(err, producer.ErrPermission) && tryAgainLater(err) {
		return cli.ExitError{Code: exTempFail, Err: err}
	}
	return err
}

func publishCommand(ctx context.Context, args []string, env Env) error {
	fs := newFlags("publish", env)
	var c publishConfig
	var to, cc, bcc, replyTo, attach listFlag
	c.NATS.register(fs, env)
	fs.StringVar(&c.File, "f", "", "read the message as JSON (docs/design.md §3) from this file, - for stdin; several messages one after another (JSON lines) are queued in atomic batches")
	fs.StringVar(&c.Msg.Account, "account", "", "account alias to send through")
	fs.Var(&to, "to", "recipient (repeatable, or comma-separated)")
	fs.Var(&cc, "cc", "Cc recipient (repeatable)")
	fs.Var(&bcc, "bcc", "Bcc recipient (repeatable)")
	fs.Var(&replyTo, "reply-to", "Reply-To address (repeatable)")
	fs.StringVar(&c.Msg.From, "from", "", "From (default: the account's mailbox)")
	fs.StringVar(&c.Msg.Subject, "subject", "", "subject")
	fs.StringVar(&c.Msg.Text, "text", "", "plain text body; - reads it from stdin (at most 35 MB)")
	fs.StringVar(&c.HTMLFile, "html-file", "", "HTML body from this file (at most 35 MB)")
	fs.Var(&attach, "attach", "attach this file (repeatable; content type from its name); large messages go through the body store")
	fs.StringVar(&c.Msg.ID, "id", "", "message id, the idempotency key (default: generated)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "give up publishing after this long")
	fs.BoolVar(&c.JSON, "json", false, "print the result as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cli.CheckTimeout(c.Timeout); err != nil {
		return err
	}
	m := &c.Msg
	if c.Msg.Text == "-" {
		if c.File == "-" {
			return cli.Usagef("-f - and --text - both read stdin: give one")
		}
		if c.File != "" {
			// The file's message would be queued and what was piped
			// in read to its end and dropped.
			return cli.Usagef("--text - and -f %s: the message's text goes in the file's JSON", c.File)
		}
		text, err := readBounded(env.Stdin, "--text -")
		if err != nil {
			return err
		}
		m.Text = string(text)
	}
	if c.File != "" {
		fromFile, err := readMessageFile(c.File, env.Stdin)
		if err != nil {
			return err
		}
		for _, f := range fromFile {
			if len(f.Unknown) > 0 {
				// The relay ignores them too; a misspelled field would
				// otherwise go unnoticed ("subjet" sends no subject).
				fmt.Fprintf(env.Stderr, "relay publish: warning: fields the relay does not know are ignored: %s\n", strings.Join(f.Unknown, ", "))
			}
			// Flags given next to -f fill what the file left empty.
			if f.Account == "" {
				f.Account = m.Account
			}
		}
		if len(fromFile) > 1 {
			if m.ID != "" || len(attach) > 0 {
				return cli.Usagef("-f holds %d messages: --id and --attach name one message; put them in the file's JSON", len(fromFile))
			}
			return publishMany(ctx, c, fromFile, env)
		}
		if fromFile[0].ID == "" {
			fromFile[0].ID = m.ID
		}
		m = fromFile[0]
	} else {
		m.To, m.Cc, m.Bcc = dedupeRecipients(to, cc, bcc)
		m.ReplyTo = replyTo
		if c.HTMLFile != "" {
			// No further than a message can be, as --attach: a FIFO
			// or a file still being written may not end.
			f, err := os.Open(c.HTMLFile)
			if err != nil {
				return cli.Usagef("--html-file: %v", err)
			}
			b, err := readBounded(f, "--html-file "+c.HTMLFile)
			f.Close()
			if err != nil {
				return err
			}
			m.HTML = string(b)
		}
	}
	for _, path := range attach {
		a, err := attachment(path)
		if err != nil {
			return err
		}
		m.Attachments = append(m.Attachments, a)
	}
	if err := producer.Check(m); err != nil {
		return cli.UsageError{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	p, closeNATS, err := publishProducer(c)
	if err != nil {
		return err
	}
	defer closeNATS()
	res, err := p.Publish(ctx, m)
	if err != nil {
		return publishRefused(err)
	}
	warnUnknown(env.Stderr, m.Account, c.Msg.Account, res)
	return printPublished(env.Stdout, c.JSON, m.Account, res)
}

// publishProducer connects as the producer role (unless the flags name
// another user) and returns a Producer and what closes its connection.
func publishProducer(c publishConfig) (*producer.Producer, func(), error) {
	nc, err := c.NATS.connect("relay-publish", roles.Producer)
	if err != nil {
		return nil, nil, err
	}
	p, err := producer.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return p, nc.Close, nil
}

// publishMany queues the messages of a file that holds several, in
// atomic batches (producer.PublishBatch): all are validated first, and
// one invalid message queues none.
func publishMany(ctx context.Context, c publishConfig, ms []*message.Message, env Env) error {
	for i, m := range ms {
		if err := producer.Check(m); err != nil {
			return cli.Usagef("message %d of %d: %v", i+1, len(ms), err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	p, closeNATS, err := publishProducer(c)
	if err != nil {
		return err
	}
	defer closeNATS()
	res, err := p.PublishBatch(ctx, ms)
	warned := map[string]bool{}
	for i, r := range res {
		if !warned[ms[i].Account] {
			warned[ms[i].Account] = warnUnknown(env.Stderr, ms[i].Account, c.Msg.Account, r)
		}
		if perr := printPublished(env.Stdout, c.JSON, ms[i].Account, r); perr != nil {
			return perr
		}
	}
	if err != nil {
		err = publishRefused(err)
		return fmt.Errorf("%d of %d messages queued (printed above; publishing the file again is safe, ids make copies duplicates): %w", len(res), len(ms), err)
	}
	return nil
}

// publishRefused is err, with what to do named when NATS refused the user
// (producer.ErrPermission): credentials of another role, most likely.
func publishRefused(err error) error {
	if !errors.Is(err, producer.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w; relay publish needs %s, with the rights deploy/nats/auth.conf gives it: the relay's seed nkeys/%s.nk in --data-dir or --nats-nkey, or --nats-user %[2]s with its password",
		err, roles.Producer.User(), string(roles.Producer))
}

// warnUnknown says on w, once, that relay serve knows no such account
// (the message is queued all the same: an account being added keeps its
// first messages), and reports whether it did. flagAccount is --account:
// the hint names it when the account came from there, else the
// message's own "account" field (-f).
func warnUnknown(w io.Writer, account, flagAccount string, res producer.Result) bool {
	if res.UnknownAccount {
		where := `the message's "account"`
		if account == flagAccount {
			where = "--account"
		}
		fmt.Fprintf(w, "warning: relay serve knows no account %q: the message is queued, and dead-lettered within seconds unless the account is added (authtool login); a typo in %s?\n", account, where)
	}
	return res.UnknownAccount
}

// printPublished prints one publish's result: a line for people, or a
// JSON object per line with --json.
func printPublished(w io.Writer, asJSON bool, account string, res producer.Result) error {
	if asJSON {
		return json.NewEncoder(w).Encode(map[string]any{"id": res.ID, "seq": res.Seq, "duplicate": res.Duplicate, "account": account})
	}
	if res.Duplicate {
		_, err := fmt.Fprintf(w, "duplicate: id %s was already queued as sequence %d; not queued again\n", res.ID, res.Seq)
		return err
	}
	_, err := fmt.Fprintf(w, "queued: id %s, stream sequence %d, account %s\n", res.ID, res.Seq, account)
	return err
}

// readMessageFile reads the JSON messages of path (- for stdin): one
// object, or several one after another (JSON lines, or objects
// concatenated).
//
// Neither a file nor stdin is read past maxMessageJSON octets of one
// message: a stream that does not end (a FIFO, "yes |", a producer that
// never closes its end) is refused as too large, exit 1 as --attach
// refuses one, instead of being read into memory until it ends.
func readMessageFile(path string, stdin io.Reader) ([]*message.Message, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, cli.Usagef("-f: %v", err)
		}
		defer f.Close()
		r = f
	}
	br := &boundedJSON{r: r}
	dec := json.NewDecoder(br)
	br.dec = dec
	var ms []*message.Message
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			break
		} else if errors.Is(err, errJSONTooLong) {
			// Exit 1, as --attach and Publish's *TooLarge (issue 16).
			return nil, fmt.Errorf("-f %s: message %d: %w, as JSON (reading stopped there; a message of at most %d bytes takes at most %d as JSON, base64 and all)",
				path, len(ms)+1, &producer.TooLarge{Size: br.read - dec.InputOffset(), Limit: message.MaxSize, AtLeast: true}, message.MaxSize, maxMessageJSON)
		} else if err != nil {
			return nil, cli.Usagef("-f: message %d: %v", len(ms)+1, err)
		}
		m, err := message.Decode(raw)
		if err != nil {
			return nil, cli.Usagef("-f: message %d: %v", len(ms)+1, err)
		}
		ms = append(ms, m)
	}
	if len(ms) == 0 {
		return nil, cli.Usagef("-f: no message in %s", path)
	}
	return ms, nil
}

// dedupeRecipients drops each address of --to, --cc and --bcc given
// before, in that order, as the envelope (message.Recipients) sends to
// it once: the address compared without regard to case, the display name
// not at all. Otherwise the count held to message.MaxRecipients counted
// it twice, and the To or Cc field named it twice. What does not parse
// stays, for Validate to name.
func dedupeRecipients(lists ...[]string) (to, cc, bcc []string) {
	seen := map[string]bool{}
	out := make([][]string, 3)
	for i, list := range lists {
		for _, s := range list {
			if a, err := message.ReadAddress(s); err == nil {
				k := strings.ToLower(a.Address)
				if seen[k] {
					continue
				}
				seen[k] = true
			}
			out[i] = append(out[i], s)
		}
	}
	return out[0], out[1], out[2]
}

// maxMessageJSON is the most one message of -f may take as JSON: its
// raw message or attachments, message.MaxSize of them at most, base64
// (RFC 4648 §4: 4 octets for 3), and 1 MiB for its other fields.
const maxMessageJSON = (message.MaxSize+2)/3*4 + 1<<20

// errJSONTooLong is boundedJSON's error past maxMessageJSON.
var errJSONTooLong = errors.New("a message's JSON longer than maxMessageJSON")

// boundedJSON reads for dec, but not more than maxMessageJSON past the
// start of the value dec is decoding (its InputOffset): one message is
// bounded, a file of many is not.
type boundedJSON struct {
	r    io.Reader
	dec  *json.Decoder
	read int64
}

func (b *boundedJSON) Read(p []byte) (int, error) {
	// One octet past the bound says the value is longer; the decoder
	// asks for as much as its doubled buffer holds, so each read is cut
	// to what is left.
	left := maxMessageJSON + 1 - (b.read - b.dec.InputOffset())
	if left <= 0 {
		return 0, errJSONTooLong
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// readBounded reads r to its end, but at most message.MaxSize octets and
// one: more is refused as too large (exit 1, naming the size read and the
// limit) without reading on, as attachment refuses a file.
func readBounded(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, message.MaxSize+1))
	if err != nil {
		return nil, cli.Usagef("%s: %v", what, err)
	}
	if len(data) > message.MaxSize {
		return nil, fmt.Errorf("%s: %w (reading stopped there)", what,
			&producer.TooLarge{Size: int64(len(data)), Limit: message.MaxSize, AtLeast: true})
	}
	return data, nil
}

// attachment reads path as an attachment, its content type guessed from
// its extension (mime.TypeByExtension), else application/octet-stream.
//
// It reads at most 35 MB and one octet (message.MaxSize): a file larger
// than that cannot fit in any message once base64-encoded, and a stream
// that does not end (a FIFO, a device, a log still being written) must
// not be read into memory until it does.
func attachment(path string) (message.Attachment, error) {
	f, err := os.Open(path)
	if err != nil {
		return message.Attachment{}, cli.Usagef("--attach: %v", err)
	}
	defer f.Close()
	// Exit 1 past the limit, as Publish's *TooLarge for a smaller file
	// that base64 takes past it (README; issue 16).
	data, err := readBounded(f, "--attach "+path)
	if err != nil {
		return message.Attachment{}, err
	}
	ct := mime.TypeByExtension(filepath.Ext(path))
	if ct == "" {
		ct = "application/octet-stream"
	}
	return message.Attachment{Filename: filepath.Base(path), ContentType: ct, Data: data}, nil
}
