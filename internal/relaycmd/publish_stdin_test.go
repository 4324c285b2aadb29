package relaycmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// stream is standard input that holds prefix and then 'a's, up to max
// octets in all (a producer that writes on and on, "yes |"), and counts
// what was read of it.
type stream struct {
	prefix   string
	max, off int64
}

func (s *stream) Read(p []byte) (int, error) {
	if s.off >= s.max {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.max-s.off))
	for i := range n {
		if j := s.off + int64(i); j < int64(len(s.prefix)) {
			p[i] = s.prefix[j]
		} else {
			p[i] = 'a'
		}
	}
	s.off += int64(n)
	return n, nil
}

// TestPublishStdinBounded: relay publish reads standard input, with -f -
// or --text -, no further than a message can be: past it the message is
// refused, exit 1 naming the size read and the limit (as --attach and
// the account's limit are, issue 16), and nothing is queued, instead of
// stdin being read into memory to its end, if it has one. --text - takes
// the body from stdin, as a script pipes a report in.
func TestPublishStdinBounded(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	flags := []string{"publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--subject", "report"}

	r := run(t, nil, "disk full on web-3\n", append(flags, "--text", "-")...)
	if r.code != 0 {
		t.Fatalf("--text -: exit %d, %s", r.code, r.stderr)
	}
	if _, m := queued(t, ctx, env.JS, 1); m.Text != "disk full on web-3\n" {
		t.Errorf("--text - queued text %q", m.Text)
	}

	const past = 60 << 20 // more than any message, as JSON too
	for _, tt := range []struct {
		name  string
		in    *stream
		args  []string
		limit int64 // the most that may be read
	}{
		{"--text -", &stream{max: past}, append(flags, "--text", "-"), message.MaxSize + 1<<20},
		{"-f -", &stream{prefix: `{"account":"alerts","to":["ops@contoso.com"],"text":"`, max: past}, []string{"publish", "--nats-url", env.URL, "-f", "-"}, maxMessageJSON + 1<<20},
	} {
		r := runIn(t, nil, tt.in, tt.args...)
		if r.code != 1 || !strings.Contains(r.stderr, "or more is over the size limit of 36700160 bytes (35.0 MB)") || !strings.Contains(r.stderr, "reading stopped there") {
			t.Errorf("%s: exit %d, stderr %q; want 1, the size and the limit", tt.name, r.code, r.stderr)
		}
		if tt.in.off > tt.limit {
			t.Errorf("%s: read %d octets of stdin, want at most %d", tt.name, tt.in.off, tt.limit)
		}
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
	if r := runIn(t, nil, strings.NewReader("x"), append(flags, "-f", "-", "--text", "-")...); r.code != 2 {
		t.Fatalf("-f - and --text -: exit %d, %s", r.code, r.stderr)
	}
}

// TestPublishDuplicateRecipients: an address given twice to --to, --cc
// or --bcc (a script's list with one name in two roles, or in two cases)
// is one recipient, as the envelope sends to it once: kept where it came
// first, named once in the header, and counted once against the 10,000
// recipients a message may have.
func TestPublishDuplicateRecipients(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	r := run(t, nil, "", "publish", "--nats-url", env.URL, "--account", "alerts", "--subject", "s", "--text", "t",
		"--to", "ops@contoso.com", "--to", "Ops <OPS@Contoso.com>", "--cc", "dev@contoso.com,ops@contoso.com", "--bcc", "dev@CONTOSO.com", "--bcc", "audit@fabrikam.com")
	if r.code != 0 {
		t.Fatalf("exit %d, %s", r.code, r.stderr)
	}
	_, m := queued(t, ctx, env.JS, 1)
	if !reflect.DeepEqual(m.To, []string{"ops@contoso.com"}) || !reflect.DeepEqual(m.Cc, []string{"dev@contoso.com"}) || !reflect.DeepEqual(m.Bcc, []string{"audit@fabrikam.com"}) {
		t.Fatalf("To %v, Cc %v, Bcc %v", m.To, m.Cc, m.Bcc)
	}
	// 10,000 recipients, one of them given twice: 10,000 in the envelope.
	var to []string
	for i := range message.MaxRecipients {
		to = append(to, fmt.Sprintf("user%d@contoso.com", i))
	}
	r = run(t, nil, "", "publish", "--nats-url", env.URL, "--account", "alerts", "--subject", "s", "--text", "t", "--to", strings.Join(to, ","), "--cc", to[0])
	if r.code != 0 {
		t.Fatalf("10,000 recipients and one again: exit %d, %s", r.code, r.stderr)
	}
}

// TestPublishTextStdinWithFileRefused: --text - next to -f FILE would read
// standard input to its end and then drop it, the file's message queued
// without the text the script piped in: refused, exit 2, nothing read or
// queued.
func TestPublishTextStdinWithFileRefused(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	file := t.TempDir() + "/m.json"
	if err := os.WriteFile(file, []byte(`{"account":"alerts","to":["ops@contoso.com"],"subject":"from file","text":"file text"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := &stream{prefix: "piped report\n", max: 13}
	r := runIn(t, nil, in, "publish", "--nats-url", env.URL, "-f", file, "--text", "-")
	if r.code != 2 || in.off != 0 {
		t.Fatalf("-f FILE and --text -: exit %d (read %d octets of stdin), stderr %q; want 2 and nothing read", r.code, in.off, r.stderr)
	}
	if n := mailCount(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d queued, want 0", n)
	}
}

// TestPublishExitCodes: relay publish tells a script whether trying again
// can help. MAIL full (or NATS unreachable: TestPublishNATSUnreachable)
// exits 75 (EX_TEMPFAIL, as relay sendmail), a message that can never be
// queued 1, a bad command 2. Before, both of the first exited 1, as a
// message over the size limit does, so a cron job could not know to try
// again.
func TestPublishExitCodes(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	flags := []string{"publish", "--account", "alerts", "--to", "ops@contoso.com", "--subject", "disk", "--timeout", "5s"}

	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	if r := run(t, nil, "", append(flags, "--nats-url", env.URL, "--id", "first")...); r.code != 0 {
		t.Fatalf("first: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, nil, "", append(flags, "--nats-url", env.URL, "--id", "second")...); r.code != 75 || !strings.Contains(r.stderr, "full") {
		t.Errorf("MAIL full: exit %d, stderr %q; want 75", r.code, r.stderr)
	}
	if r := run(t, nil, "", append(flags, "--nats-url", env.URL, "--from", "not an address")...); r.code != 2 {
		t.Errorf("bad --from: exit %d, stderr %q; want 2", r.code, r.stderr)
	}
}

// TestPublishInterruptedExits130: relay publish interrupted (Ctrl-C,
// SIGTERM: Main's context ends) before its message is queued exits 130,
// as every command but relay sendmail does, not 75: "try again later"
// would have a wrapper publish again what the person meant to stop.
func TestPublishInterruptedExits130(t *testing.T) {
	env, sctx := queuetest.StartMail(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the signal came as the command started
	var out, errb bytes.Buffer
	code := Run(ctx, []string{"publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--subject", "disk", "--timeout", "5s"},
		Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code != 130 || !strings.Contains(errb.String(), "interrupted") {
		t.Errorf("interrupted: exit %d, stderr %q; want 130 saying it was interrupted", code, errb.String())
	}
	if n := queuetest.Msgs(t, sctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("%d queued, want 0", n)
	}
}
