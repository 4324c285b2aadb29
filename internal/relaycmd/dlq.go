package relaycmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/termsafe"
)

const dlqUsage = `Usage: relay dlq <command> [flags]

Dead letters are messages that could not be sent; MAIL_DLQ keeps each with
its reason, class, attempts, last reply, original subject and sequence.

  list   [--account A] [--reason TEXT] [--limit N] [--json]
                                              list dead letters, oldest first (the table: 100 unless --limit;
                                              --json: one JSON object a line, every match)
  show   SEQ [--json]                         headers and body of one dead letter, and whether its
                                              stored body (large mail) is still in relay_bodies
  replay SEQ | --all [--account A] [--reason TEXT]
                                              queue again as new messages (fresh attempt count)
  purge  --yes [--account A]                  delete dead letters for good
`

// defaultListLimit is how many dead letters list's table shows unless
// --limit says otherwise.
const defaultListLimit = 100

// dlqConfig is what every dlq subcommand takes.
type dlqConfig struct {
	NATS    natsClient
	Account string
	Reason  string
	All     bool
	Yes     bool
	JSON    bool
	Limit   int
	Timeout time.Duration
}

func runDLQ(ctx context.Context, args []string, env Env) error {
	sub, args, ok, err := subcommand(args, "dlq", "list, show, replay or purge", dlqUsage, env)
	if !ok {
		return err
	}
	var c dlqConfig
	fs := newFlags("dlq "+sub, env)
	c.NATS.register(fs, env)
	fs.DurationVar(&c.Timeout, "timeout", time.Minute, "give up after this long")
	var run func(context.Context, jetstream.JetStream, dlqConfig, []string, Env) error
	switch sub {
	case "list":
		fs.StringVar(&c.Account, "account", "", "only this account's dead letters")
		fs.StringVar(&c.Reason, "reason", "", "only dead letters whose reason contains this text (case-insensitive)")
		fs.BoolVar(&c.JSON, "json", false, "print JSON lines instead of a table (every match, --limit aside)")
		fs.IntVar(&c.Limit, "limit", defaultListLimit, "table: show at most this many, the oldest (0: all)")
		run = dlqList
	case "show":
		fs.BoolVar(&c.JSON, "json", false, "print JSON")
		run = dlqShow
	case "replay":
		fs.BoolVar(&c.All, "all", false, "replay every dead letter (narrowed by --account and --reason)")
		fs.StringVar(&c.Account, "account", "", "with --all: only this account's dead letters")
		fs.StringVar(&c.Reason, "reason", "", "with --all: only dead letters whose reason contains this text")
		run = dlqReplay
	case "purge":
		fs.BoolVar(&c.Yes, "yes", false, "confirm: the dead letters are deleted for good")
		fs.StringVar(&c.Account, "account", "", "only this account's dead letters")
		run = dlqPurge
	default:
		fmt.Fprint(env.Stderr, dlqUsage)
		return cli.Usagef("unknown dlq command %q", sub)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	// An empty filter selects everything: given so, it is a script's
	// unset variable (purge --yes --account "$ACCOUNT"), not a wish to
	// purge or replay the whole DLQ.
	fs.Visit(func(f *flag.Flag) {
		if (f.Name == "account" || f.Name == "reason") && f.Value.String() == "" && err == nil {
			err = cli.Usagef("--%s is empty: name one, or leave --%s out for all", f.Name, f.Name)
		}
	})
	if err != nil {
		return err
	}
	if err := checkDLQArgs(sub, c, pos); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	ctx, stop, onRefusal := endOnRefusal(ctx)
	defer stop()
	nc, js, err := c.NATS.jetStream("relay-dlq", roles.Admin, onRefusal)
	if err != nil {
		return err
	}
	defer nc.Close()
	err = run(ctx, js, c, pos, env)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// The server answered but has none of the relay's streams: most
		// often not the relay's NATS at all.
		err = fmt.Errorf("%w (on %s: is it the relay's NATS? relay serve makes the streams on its own server, relay setup on a cluster)",
			err, queue.RedactURL(c.NATS.URL))
	}
	return refusal(ctx, err, roles.Admin)
}

// parseInterspersed parses flags before and after positional arguments
// ("show 17 --json") and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, cli.UsageError{Err: err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// checkDLQArgs refuses what cannot be meant, before connecting.
func checkDLQArgs(sub string, c dlqConfig, pos []string) error {
	if err := cli.CheckTimeout(c.Timeout); err != nil {
		// Not "no limit": every request would fail at once, a replay
		// --all naming every dead letter "not tried".
		return err
	}
	switch sub {
	case "list", "purge":
		if len(pos) > 0 {
			return cli.Usagef("unexpected argument %q", pos[0])
		}
		if c.Limit < 0 {
			return cli.Usagef("--limit %d: give a count, or 0 for all", c.Limit)
		}
		if sub == "purge" && !c.Yes {
			return cli.Usagef("purge deletes dead letters for good: add --yes (and --account to limit it)")
		}
	case "show":
		if len(pos) != 1 {
			return cli.Usagef("give one dead letter sequence number (see relay dlq list)")
		}
	case "replay":
		switch {
		case c.All && len(pos) > 0:
			return cli.Usagef("give a sequence number or --all, not both")
		case !c.All && len(pos) != 1:
			return cli.Usagef("give one dead letter sequence number, or --all")
		case !c.All && (c.Account != "" || c.Reason != ""):
			return cli.Usagef("--account and --reason narrow --all; a sequence number names one dead letter already")
		}
	}
	for _, p := range pos {
		if _, err := parseSeq(p); err != nil {
			return err
		}
	}
	if c.Account != "" && !message.ValidAccount(c.Account) {
		return cli.Usagef("--account %q is not an account alias", c.Account)
	}
	return nil
}

func parseSeq(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, cli.Usagef("%q is not a dead letter sequence number (see relay dlq list)", s)
	}
	return n, nil
}

func dlqList(ctx context.Context, js jetstream.JetStream, c dlqConfig, _ []string, env Env) error {
	if c.JSON {
		// Printed as they are read: after an incident there are
		// thousands, each as large as an inline message.
		return queue.EachDeadLetter(ctx, js, queue.DeadLetterFilter{Account: c.Account, Reason: c.Reason}, func(e queue.DeadLetterEntry) error {
			return writeJSON(env.Stdout, entryJSON(e), false)
		})
	}
	// The table shows only what the headers say: the messages stay on
	// the server (--json prints them).
	list, err := queue.ListDeadLetters(ctx, js, queue.DeadLetterFilter{Account: c.Account, Reason: c.Reason, HeadersOnly: true})
	if err != nil {
		return err
	}
	if len(list) == 0 {
		fmt.Fprintln(env.Stdout, "no dead letters")
		return nil
	}
	// Every field comes from outside (the producer, the SMTP server, the
	// subject): escaped, it can neither drive the terminal nor break the
	// table's columns with a tab or a newline.
	//
	// After an incident there are thousands: the table stops at --limit
	// and says how many it left out.
	shown := list
	if c.Limit > 0 && len(shown) > c.Limit {
		shown = shown[:c.Limit]
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tDEAD-LETTERED\tACCOUNT\tID\tCLASS\tATTEMPTS\tREASON")
	for _, e := range shown {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", e.Seq, e.Stored.UTC().Format(time.RFC3339),
			termsafe.Line(e.Account), termsafe.Line(e.ID), termsafe.Line(e.Class), e.Attempts, termsafe.Shorten(termsafe.Line(e.Reason), 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(shown) < len(list) {
		fmt.Fprintf(env.Stdout, "showing the oldest %d of %d dead letters (--limit 0 for all, --json for scripts, --account and --reason to narrow)\n", len(shown), len(list))
		return nil
	}
	fmt.Fprintf(env.Stdout, "%d dead letters (relay dlq show SEQ for one, relay dlq replay SEQ to send it again)\n", len(list))
	return nil
}

func dlqShow(ctx context.Context, js jetstream.JetStream, c dlqConfig, pos []string, env Env) error {
	seq, _ := parseSeq(pos[0])
	e, err := queue.GetDeadLetter(ctx, js, seq)
	if err != nil {
		return err
	}
	// A stored body gone from relay_bodies (deleted, purged with an
	// earlier copy of this dead letter, changed) is what a replay refuses:
	// show says so before anyone tries.
	ref := storedBody(e.Data)
	var state, problem string
	if ref != nil {
		state, problem = checkStoredBody(ctx, js, *ref)
	}
	if c.JSON {
		out := entryJSON(e)
		out.StoredBody, out.StoredBodyProblem = state, problem
		return writeJSON(env.Stdout, out, true)
	}
	// Headers and body as stored, with what would drive the terminal
	// escaped (termsafe).
	fmt.Fprintf(env.Stdout, "Sequence: %d\nDead-lettered: %s\nAccount: %s\n", e.Seq, e.Stored.UTC().Format(time.RFC3339), termsafe.Line(e.Account))
	keys := make([]string, 0, len(e.Header))
	for k := range e.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range e.Header[k] {
			fmt.Fprintf(env.Stdout, "%s: %s\n", termsafe.Line(k), termsafe.Line(v))
		}
	}
	if ref != nil {
		fmt.Fprintf(env.Stdout, "Stored-Body: %s, %d bytes (%.1f MB)", ref.Object, ref.Size, float64(ref.Size)/(1<<20))
		switch state {
		case bodyGone:
			fmt.Fprintf(env.Stdout, ", GONE from %s: %s (relay dlq replay refuses it; relay dlq purge removes it)", body.Bucket, termsafe.Line(problem))
		case bodyUnknown:
			fmt.Fprintf(env.Stdout, ", not checked: %s", termsafe.Line(problem))
		}
		fmt.Fprintln(env.Stdout)
	}
	fmt.Fprintln(env.Stdout)
	writeBody(env.Stdout, e.Data)
	return nil
}

// storedBody is the body reference of a dead letter whose content is in
// the body store, nil for any other. The reference comes from the
// producer and was never validated (a dead letter is often one Validate
// refused): one that names no object the relay could have stored is
// none, so that show does not print its name raw (control sequences
// included; the JSON below shows it escaped) and purge does not ask the
// store to delete it (an empty name is an error there, failing the
// purge).
func storedBody(data []byte) *message.BodyRef {
	m, err := message.Decode(data)
	if err != nil || m.Body == nil || !message.ValidBodyObject(m.Body.Object) {
		return nil
	}
	return m.Body
}

// What show --json's stored_body says of a dead letter's stored body.
const (
	bodyPresent = "present" // in relay_bodies as it was queued
	bodyGone    = "gone"    // deleted or changed: replay refuses it
	bodyUnknown = "unknown" // the store did not answer
)

// checkStoredBody is the state of the body ref names (bodyPresent,
// bodyGone, bodyUnknown) and, unless present, why.
func checkStoredBody(ctx context.Context, js jetstream.JetStream, ref message.BodyRef) (state, problem string) {
	store, err := body.Open(ctx, js)
	if err == nil {
		err = store.Check(ctx, ref)
	}
	var inv *message.Invalid
	switch {
	case err == nil:
		return bodyPresent, ""
	case errors.As(err, &inv):
		return bodyGone, inv.Reason
	}
	return bodyUnknown, err.Error()
}

// writeBody prints the message: indented when it is JSON, as text
// otherwise (CRLF as LF), with what would drive the terminal escaped. A
// message handed over whole (the SMTP front door, relay sendmail: "raw",
// base64 in the JSON) is shown as the JSON without it, then the message
// itself as text.
func writeBody(w io.Writer, data []byte) {
	var fields map[string]json.RawMessage
	var raw []byte
	if json.Unmarshal(data, &fields) == nil && json.Unmarshal(fields["raw"], &raw) == nil && len(raw) > 0 {
		delete(fields, "raw")
		if rest, err := json.Marshal(fields); err == nil {
			writeText(w, rest)
			fmt.Fprintf(w, "\nraw message, %d bytes:\n\n", len(raw))
			data = raw
		}
	}
	writeText(w, data)
}

// writeText prints data as writeBody says, JSON indented.
func writeText(w io.Writer, data []byte) {
	var out bytes.Buffer
	if json.Indent(&out, data, "", "  ") == nil {
		data = termsafe.JSON(out.Bytes())
	} else {
		data = []byte(termsafe.Text(string(data)))
	}
	w.Write(data)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		fmt.Fprintln(w)
	}
}

// writeJSON prints v as one JSON document (indented or one line).
// encoding/json escapes C0 controls but not DEL, C1 or bidirectional
// controls, nor a RawMessage's invalid bytes: termsafe.JSON escapes those
// too, and the output still decodes to the same values.
func writeJSON(w io.Writer, v any, indent bool) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if indent {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(termsafe.JSON(buf.Bytes()))
	return err
}

func dlqReplay(ctx context.Context, js jetstream.JetStream, c dlqConfig, pos []string, env Env) error {
	var seqs []uint64
	target := map[uint64]string{} // the account each replay would queue for
	if c.All {
		// Each replay reads its dead letter whole; choosing them takes
		// only the headers.
		list, err := queue.ListDeadLetters(ctx, js, queue.DeadLetterFilter{Account: c.Account, Reason: c.Reason, HeadersOnly: true})
		if err != nil {
			return err
		}
		for _, e := range list {
			seqs = append(seqs, e.Seq)
			target[e.Seq] = e.ReplayAccount()
		}
		if len(seqs) == 0 {
			fmt.Fprintln(env.Stdout, "no dead letters to replay")
			return nil
		}
	} else {
		seq, _ := parseSeq(pos[0])
		seqs = []uint64{seq}
		e, err := queue.GetDeadLetter(ctx, js, seq)
		switch {
		case errors.Is(err, queue.ErrNoDeadLetter), errors.Is(err, jetstream.ErrStreamNotFound):
			// Nothing to replay and nothing kept (replayed or purged
			// already, as by running the same replay twice; or no
			// MAIL_DLQ at all): the summary's "not replayed (kept in
			// MAIL_DLQ)" would be false.
			return err
		case err == nil:
			target[seq] = e.ReplayAccount()
		}
	}
	// How long MAIL recognises a replay's Nats-Msg-Id, and so how long a
	// dead letter queued again but not removed may be replayed again
	// without a second copy: MAIL's duplicate window, which a short queue
	// lifetime makes shorter than the default (queue.DuplicatesFor).
	// Read now, while the context is fresh.
	window := queue.DedupeWindow
	if s, err := js.Stream(ctx, queue.StreamMail); err == nil && s.CachedInfo().Config.Duplicates > 0 {
		window = s.CachedInfo().Config.Duplicates
	}
	// Mail replayed for an account relay serve does not know would only
	// come back as "no such account": it stays here until the account is
	// connected. (Unread registry: no check, the replay goes ahead.)
	known := configuredAccounts(ctx, js)
	// Each dead letter ends as one of: queued (and removed), gone before
	// its turn (another operator's replay or purge: --all only), queued
	// but not removed, not queued (kept), or not queued with no answer to
	// whether it is still there (queue.ErrDeadLetterUnknown). The summary
	// names the last three, and every one not reached when the run was
	// cut short.
	var failed, unknown, stuck []string
	gone := 0
	bodies := &replayBodies{js: js}
replay:
	for i, seq := range seqs {
		if alias, ok := target[seq]; ok && known != nil && !known[alias] {
			fmt.Fprintf(env.Stdout, "[%d/%d] dead letter %d: not replayed: no account %q is configured (relay serve would dead-letter it again); connect it with authtool login, or relay dlq purge it\n",
				i+1, len(seqs), seq, termsafe.Line(alias))
			failed = append(failed, strconv.FormatUint(seq, 10))
			continue
		}
		bodies.copied = ""
		res, err := queue.ReplayDeadLetterWith(ctx, js, seq, func(e queue.DeadLetterEntry) ([]byte, error) { return bodies.prepare(ctx, e) })
		bodies.done(ctx, res, err)
		if bodies.formerBytes >= replayCleanEvery {
			if err := bodies.cleanUp(ctx); err != nil {
				fmt.Fprintf(env.Stdout, "the replayed dead letters' former bodies were not all deleted (the sweeper deletes the rest within a day): %v\n", err)
			}
		}
		switch {
		case err == nil:
			note := ""
			if res.Duplicate {
				note = " (already queued by an earlier replay)"
			}
			fmt.Fprintf(env.Stdout, "[%d/%d] dead letter %d queued again as %s sequence %d%s\n", i+1, len(seqs), seq, queue.StreamMail, res.Seq, note)
		case errors.Is(err, queue.ErrNoDeadLetter):
			if !c.All {
				return err // gone since it was read above: nothing kept either
			}
			fmt.Fprintf(env.Stdout, "[%d/%d] dead letter %d: gone already (replayed or purged since it was listed)\n", i+1, len(seqs), seq)
			gone++
		case res.Seq != 0:
			fmt.Fprintf(env.Stdout, "[%d/%d] dead letter %d: %v\n", i+1, len(seqs), seq, err)
			stuck = append(stuck, strconv.FormatUint(seq, 10))
		default:
			fmt.Fprintf(env.Stdout, "[%d/%d] dead letter %d: FAILED: %v\n", i+1, len(seqs), seq, err)
			if errors.Is(err, queue.ErrDeadLetterUnknown) {
				// Not queued, and maybe purged meanwhile: not "kept".
				unknown = append(unknown, strconv.FormatUint(seq, 10))
			} else {
				failed = append(failed, strconv.FormatUint(seq, 10))
			}
			if ctx.Err() != nil {
				for _, rest := range seqs[i+1:] {
					failed = append(failed, strconv.FormatUint(rest, 10))
				}
				fmt.Fprintf(env.Stdout, "stopped (%v): %d dead letters not tried\n", context.Cause(ctx), len(seqs)-i-1)
				break replay
			}
		}
	}
	if err := bodies.cleanUp(ctx); err != nil {
		fmt.Fprintf(env.Stdout, "the replayed dead letters' former bodies were not all deleted (the sweeper deletes the rest within a day): %v\n", err)
	}
	var problems []string
	if len(failed) > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d not replayed (kept in %s): %s", len(failed), len(seqs), queue.StreamDLQ, strings.Join(failed, ", ")))
	}
	if len(unknown) > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d not replayed, and whether still in %s unknown (see relay dlq list): %s",
			len(unknown), len(seqs), queue.StreamDLQ, strings.Join(unknown, ", ")))
	}
	if len(stuck) > 0 {
		problems = append(problems, fmt.Sprintf("%d queued again but still in %s (replayed again within %s, each is recognised as a duplicate, not queued twice): %s",
			len(stuck), queue.StreamDLQ, span(window), strings.Join(stuck, ", ")))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	replayed := len(seqs) - gone
	if gone > 0 {
		fmt.Fprintf(env.Stdout, "replayed %d dead letters (%d gone already); each is a new message with a fresh attempt count\n", replayed, gone)
		return nil
	}
	fmt.Fprintf(env.Stdout, "replayed %d dead letters; each is a new message with a fresh attempt count\n", replayed)
	return nil
}

// replayBodies gives the copy a replay queues a body of its own: a
// dead letter's body is in the list of what relay dlq purge deletes, and
// a purge between the replay's read of the dead letter and its publish
// deleted the body the queued copy then named (the worker dead-lettered
// it again for a missing body, the mail lost). Its own name is in no
// purge's list until it is dead-lettered itself. The dead letter's body
// is deleted at the end of the run if nothing names it then
// (body.Store.DeleteUnnamed, one pass for the whole run).
type replayBodies struct {
	js     jetstream.JetStream
	store  *body.Store // opened at the first dead letter with a stored body
	copied string      // the copy made for this replay, "" for none
	former []string    // the bodies of the dead letters replayed
	// formerBytes is the size of former: cleanUp runs when it reaches
	// replayCleanEvery, not only at the end of the run.
	formerBytes int64
}

// replayCleanEvery bounds what a replay --all keeps twice in the body
// store (each copy beside the dead letter's own body) before it deletes
// the former ones: a thousand dead letters of 30 MB held 30 GB more until
// the run's end. Each clean-up reads MAIL and MAIL_DLQ once.
var replayCleanEvery int64 = 1 << 30

// prepare copies the body of e, if it has one, and returns e's data
// naming the copy. A body gone from the store (or changed) is not
// replayed: the copy would only be dead-lettered again.
func (b *replayBodies) prepare(ctx context.Context, e queue.DeadLetterEntry) ([]byte, error) {
	ref := storedBody(e.Data)
	if ref == nil {
		return e.Data, nil
	}
	if b.store == nil {
		store, err := body.Open(ctx, b.js)
		if err != nil {
			return nil, err
		}
		b.store = store
	}
	cp, err := b.store.Copy(ctx, *ref)
	if err != nil {
		return nil, fmt.Errorf("copy its stored body: %w", err)
	}
	b.copied = cp.Object
	// The names are of one length and appear only as the reference's
	// object: the rest of the message stays as it was, byte for byte.
	data := bytes.ReplaceAll(e.Data, []byte(ref.Object), []byte(cp.Object))
	if got := storedBody(data); got == nil || got.Object != cp.Object {
		// The name written with JSON escapes: decoded and encoded anew.
		m, err := message.Decode(e.Data)
		if err == nil {
			m.Body = &cp
			data, err = m.Encode()
		}
		if err != nil {
			b.forget(ctx)
			return nil, fmt.Errorf("name the copy of its stored body: %w", err)
		}
	}
	b.former = append(b.former, ref.Object)
	b.formerBytes += ref.Size
	return data, nil
}

// done settles the copy after the replay's publish. A copy queued names
// it; a duplicate (an earlier replay's copy is queued) does not, and no
// other message can know its fresh name, so it goes; so does one that
// MAIL refused as full at the first attempt (queue.NotStored). After
// another failed publish it stays for the sweeper: the server may have
// stored the message without its PubAck reaching here.
func (b *replayBodies) done(ctx context.Context, res queue.PublishResult, err error) {
	duplicate := res.Seq != 0 && res.Duplicate // even if the removal failed after
	if b.copied != "" && (duplicate || res.Seq == 0 && queue.NotStored(err)) {
		b.forget(ctx)
	}
	b.copied = ""
}

// forget deletes the copy of this replay.
func (b *replayBodies) forget(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = b.store.Delete(dctx, b.copied)
	b.copied = ""
}

// cleanUp deletes the replayed dead letters' former bodies that nothing
// names any more (a dead letter not removed still names its own).
func (b *replayBodies) cleanUp(ctx context.Context) error {
	if len(b.former) == 0 || ctx.Err() != nil {
		return nil // cut short: the sweeper deletes them
	}
	_, err := b.store.DeleteUnnamed(ctx, b.js, b.former)
	b.former, b.formerBytes = b.former[:0], 0
	return err
}

// span is d for a person: "24 hours", or as Go writes it ("1h24m0s").
func span(d time.Duration) string {
	if d >= time.Hour && d%time.Hour == 0 {
		return fmt.Sprintf("%d hours", d/time.Hour)
	}
	return d.String()
}

func dlqPurge(ctx context.Context, js jetstream.JetStream, c dlqConfig, _ []string, env Env) error {
	// The bodies of large dead letters go with them: named first, deleted
	// after the purge (a crash between leaves orphans for the sweeper).
	// Read one pull at a time, keeping only the names: after an incident
	// there are thousands, each as large as an inline message.
	var bodies []string
	var through uint64 // the last dead letter listed: one stored since stays
	err := queue.EachDeadLetter(ctx, js, queue.DeadLetterFilter{Account: c.Account}, func(e queue.DeadLetterEntry) error {
		if ref := storedBody(e.Data); ref != nil {
			bodies = append(bodies, ref.Object)
		}
		through = max(through, e.Seq)
		return nil
	})
	if err != nil {
		return err
	}
	n, kept, err := queue.PurgeDeadLetters(ctx, js, c.Account, through)
	if err != nil {
		return err
	}
	if len(bodies) > 0 {
		// Only the bodies no message names any more: a replayed copy
		// queued in MAIL may name one (a replay that could not remove
		// its dead letter, or one racing this purge).
		store, err := body.Open(ctx, js)
		if err == nil {
			_, err = store.DeleteUnnamed(ctx, js, bodies)
		}
		if err != nil {
			return fmt.Errorf("dead letters purged, but not all of their bodies (the sweeper deletes the rest within a day): %w", err)
		}
	}
	which := "all accounts"
	if c.Account != "" {
		which = "account " + c.Account
	}
	fmt.Fprintf(env.Stdout, "purged %d dead letters of %s\n", n, which)
	if kept > 0 {
		fmt.Fprintf(env.Stdout, "kept %d dead-lettered while it ran (run it again to purge them)\n", kept)
	}
	return nil
}

// deadLetterJSON is the --json form of a dead letter.
type deadLetterJSON struct {
	Seq          uint64            `json:"seq"`
	DeadLettered time.Time         `json:"dead_lettered"`
	Account      string            `json:"account"`
	ID           string            `json:"id"`
	Reason       string            `json:"reason"`
	Class        string            `json:"class"`
	Attempts     int               `json:"attempts"`
	LastReply    string            `json:"last_reply,omitempty"`
	OrigSubject  string            `json:"original_subject"`
	OrigSeq      uint64            `json:"original_seq"`
	FirstAttempt time.Time         `json:"first_attempt,omitzero"`
	LastAttempt  time.Time         `json:"last_attempt,omitzero"`
	Headers      map[string]string `json:"headers,omitempty"`
	Message      json.RawMessage   `json:"message,omitempty"`
	Raw          []byte            `json:"raw,omitempty"`
	// StoredBody, show only, for a message whose content is in the body
	// store: "present", "gone" (deleted or changed: replay refuses it)
	// or "unknown" (the store did not answer); StoredBodyProblem says
	// why when not present.
	StoredBody        string `json:"stored_body,omitempty"`
	StoredBodyProblem string `json:"stored_body_problem,omitempty"`
}

func entryJSON(e queue.DeadLetterEntry) deadLetterJSON {
	out := deadLetterJSON{
		Seq: e.Seq, DeadLettered: e.Stored, Account: e.Account, ID: e.ID, Reason: e.Reason, Class: e.Class,
		Attempts: e.Attempts, LastReply: e.LastReply, OrigSubject: e.OrigSubject, OrigSeq: e.OrigSeq,
		FirstAttempt: e.FirstAttempt, LastAttempt: e.LastAttempt, Headers: map[string]string{},
	}
	for k := range e.Header {
		out.Headers[k] = e.Header.Get(k)
	}
	if json.Valid(e.Data) {
		out.Message = e.Data
	} else {
		out.Raw = e.Data
	}
	return out
}

// configuredAccounts is the set of account aliases in relay_accounts, or
// nil when the registry cannot be read.
func configuredAccounts(ctx context.Context, js jetstream.JetStream) map[string]bool {
	reg, err := account.OpenRegistry(ctx, js)
	if err != nil {
		return nil
	}
	list, err := reg.List(ctx)
	if err != nil {
		return nil
	}
	known := make(map[string]bool, len(list))
	for _, a := range list {
		known[a.Alias] = true
	}
	return known
}
