package relaycmd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"time"

	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/producer"
)

type publishConfig struct {
	NATSURL  string
	NATS     queue.ConnectOptions
	DataDir  string
	File     string
	HTMLFile string
	Timeout  time.Duration
	JSON     bool
	Msg      message.Message
}

func runPublish(ctx context.Context, args []string, env Env) error {
	fs := newFlags("publish", env)
	var c publishConfig
	var to, cc, bcc, replyTo, attach listFlag
	fs.StringVar(&c.NATSURL, "nats-url", envOr(env, "RELAY_NATS_URL", queue.DefaultURL), "NATS server URL (env RELAY_NATS_URL)")
	c.NATS.Register(fs, env.Getenv)
	dataDirFlag(fs, env, &c.DataDir)
	fs.StringVar(&c.File, "f", "", "read the message as JSON (docs/design.md §3) from this file, - for stdin")
	fs.StringVar(&c.Msg.Account, "account", "", "account alias to send through")
	fs.Var(&to, "to", "recipient (repeatable, or comma-separated)")
	fs.Var(&cc, "cc", "Cc recipient (repeatable)")
	fs.Var(&bcc, "bcc", "Bcc recipient (repeatable)")
	fs.Var(&replyTo, "reply-to", "Reply-To address (repeatable)")
	fs.StringVar(&c.Msg.From, "from", "", "From (default: the account's mailbox)")
	fs.StringVar(&c.Msg.Subject, "subject", "", "subject")
	fs.StringVar(&c.Msg.Text, "text", "", "plain text body")
	fs.StringVar(&c.HTMLFile, "html-file", "", "HTML body from this file")
	fs.Var(&attach, "attach", "attach this file (repeatable; content type from its name); large messages go through the body store")
	fs.StringVar(&c.Msg.ID, "id", "", "message id, the idempotency key (default: generated)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "give up publishing after this long")
	fs.BoolVar(&c.JSON, "json", false, "print the result as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	m := &c.Msg
	if c.File != "" {
		fromFile, err := readMessageFile(c.File, env.Stdin)
		if err != nil {
			return err
		}
		if len(fromFile.Unknown) > 0 {
			// The relay ignores them too; a misspelled field would
			// otherwise go unnoticed ("subjet" sends no subject).
			fmt.Fprintf(env.Stderr, "relay publish: warning: fields the relay does not know are ignored: %s\n", strings.Join(fromFile.Unknown, ", "))
		}
		// Flags given next to -f fill what the file left empty.
		if fromFile.Account == "" {
			fromFile.Account = m.Account
		}
		if fromFile.ID == "" {
			fromFile.ID = m.ID
		}
		m = fromFile
	} else {
		m.To, m.Cc, m.Bcc, m.ReplyTo = to, cc, bcc, replyTo
		if c.HTMLFile != "" {
			b, err := os.ReadFile(c.HTMLFile)
			if err != nil {
				return cli.Usagef("--html-file: %v", err)
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
	if err := m.Validate(); err != nil {
		return cli.UsageError{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	roles.Default(&c.NATS, c.DataDir, roles.Producer)
	nc, err := connectNATS(c.NATSURL, "relay-publish", c.NATS)
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := producer.New(nc)
	if err != nil {
		return err
	}
	res, err := p.Publish(ctx, m)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(env.Stdout).Encode(map[string]any{"id": res.ID, "seq": res.Seq, "duplicate": res.Duplicate, "account": m.Account})
	}
	if res.Duplicate {
		fmt.Fprintf(env.Stdout, "duplicate: id %s was already queued as sequence %d; not queued again\n", res.ID, res.Seq)
		return nil
	}
	fmt.Fprintf(env.Stdout, "queued: id %s, stream sequence %d, account %s\n", res.ID, res.Seq, m.Account)
	return nil
}

func readMessageFile(path string, stdin io.Reader) (*message.Message, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, cli.Usagef("-f: %v", err)
	}
	m, err := message.Decode(data)
	if err != nil {
		return nil, cli.UsageError{Err: err}
	}
	return m, nil
}

// attachment reads path as an attachment, its content type guessed from
// its extension (mime.TypeByExtension), else application/octet-stream.
func attachment(path string) (message.Attachment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return message.Attachment{}, cli.Usagef("--attach: %v", err)
	}
	ct := mime.TypeByExtension(filepath.Ext(path))
	if ct == "" {
		ct = "application/octet-stream"
	}
	return message.Attachment{Filename: filepath.Base(path), ContentType: ct, Data: data}, nil
}
