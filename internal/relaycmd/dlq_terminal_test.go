package relaycmd_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// hostile clears the screen and retitles the window when printed raw.
const hostile = "\x1b[2J\x1b]0;pwned\x07"

// terminalSafe fails if out holds a byte a terminal would act on: a C0
// control other than newline and tab, DEL, a C1 control (as a character
// or a lone byte), a bidirectional control.
func terminalSafe(t *testing.T, what, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: invalid UTF-8 in the output", what)
	}
	for i, r := range out {
		switch {
		case r == '\n' || r == '\t':
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f),
			r == 0x061c || r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069):
			t.Errorf("%s: %U at byte %d: %q", what, r, i, out[max(0, i-20):min(len(out), i+20)])
		}
	}
}

// hostileDeadLetters stores dead letters whose id, subject, reason,
// headers and body hold control sequences: one the worker's way
// (MoveToDLQ), and one written raw to mail.dlq.<account>, as an older
// version or anyone allowed to publish there could.
func hostileDeadLetters(t *testing.T) *queuetest.Env {
	t.Helper()
	env, ctx := queuetest.StartMail(t)
	body, _ := json.Marshal(map[string]any{"id": hostile, "subject": hostile + "\u009b2J\u202e", "to": []string{"ops@contoso.com"}, "text": "x\x7f"})
	env.DeadLetter(t, ctx, "alerts", hostile, body, queue.DeadLetter{
		ID: hostile, Account: "alerts", Reason: "invalid message: " + hostile, Class: "invalid", LastReply: "550 " + hostile,
	})
	raw := &nats.Msg{Subject: queue.DLQPrefix + "alerts", Header: nats.Header{},
		Data: []byte("Subject: " + hostile + "\r\n\r\nbody \x9b\xff\u202e\r\nover\rwritten\r\n")}
	raw.Header.Set(jetstream.MsgIDHeader, hostile+":dlq")
	raw.Header.Set(queue.HdrMessageID, hostile)
	raw.Header.Set(queue.HdrReason, "reason\t"+hostile)
	raw.Header.Set(queue.HdrClass, hostile)
	raw.Header.Set(queue.HdrAttempts, "3")
	raw.Header.Set("X-Hostile", hostile+"\u009b31m")
	if _, err := env.JS.PublishMsg(ctx, raw); err != nil {
		t.Fatal(err)
	}
	return env
}

func TestDLQOutputIsTerminalSafe(t *testing.T) {
	env := hostileDeadLetters(t)
	escaped := `\x1b[2J\x1b]0;pwned\a`
	for _, args := range [][]string{
		{"dlq", "list"}, {"dlq", "list", "--json"},
		{"dlq", "show", "1"}, {"dlq", "show", "2"}, {"dlq", "show", "1", "--json"}, {"dlq", "show", "2", "--json"},
	} {
		what := strings.Join(args, " ")
		code, out, errOut := run(t, append(args, "--nats-url", env.URL)...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s", what, code, errOut)
		}
		terminalSafe(t, what, out)
		terminalSafe(t, what+" (stderr)", errOut)
		if !strings.Contains(what, "--json") && !strings.Contains(out, escaped) {
			t.Errorf("%s: the escaped id %s is not shown:\n%s", what, escaped, out)
		}
	}
	// The table keeps its columns: one line per dead letter.
	_, out, _ := run(t, "dlq", "list", "--nats-url", env.URL)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 {
		t.Errorf("list: %d lines, want a header, 2 dead letters and the summary:\n%s", len(lines), out)
	}
	// The raw body is shown line by line, its lone CR escaped.
	_, out, _ = run(t, "dlq", "show", "2", "--nats-url", env.URL)
	for _, want := range []string{"Subject: " + escaped + "\n", `body \x9b\xff\u202e` + "\n", `over\rwritten` + "\n", "X-Hostile: " + escaped + `\u009b31m`} {
		if !strings.Contains(out, want) {
			t.Errorf("show 2 lacks %q:\n%s", want, out)
		}
	}
	// --json decodes to exactly what is stored.
	_, out, _ = run(t, "dlq", "list", "--json", "--nats-url", env.URL)
	dec := json.NewDecoder(strings.NewReader(out))
	var ids []string
	for dec.More() {
		var e struct {
			ID string `json:"id"`
		}
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	if len(ids) != 2 || ids[1] != hostile {
		t.Errorf("list --json ids %q, want the raw dead letter's id exact", ids)
	}
}

// A message's body reference comes from the producer like the rest of
// it: a dead letter naming a "body object" that holds control sequences
// (dead-lettered because Validate refused that name) must show them
// escaped, and purging it must not try to delete such an object from the
// body store (the relay never stored one under that name).
func TestDLQHostileBodyReference(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	for i, object := range []string{hostile, ""} {
		data, _ := json.Marshal(map[string]any{"id": "h", "to": []string{"ops@contoso.com"},
			"body": map[string]any{"object": object, "size": 1, "digest": "SHA-256=" + hostile}})
		id := fmt.Sprintf("h-%d", i)
		env.DeadLetter(t, ctx, "alerts", id, data, queue.DeadLetter{ID: id, Account: "alerts", Reason: "invalid message: body.object", Class: "invalid"})
	}
	for _, args := range [][]string{{"dlq", "show", "1"}, {"dlq", "show", "2"}} {
		what := strings.Join(args, " ")
		code, out, errOut := run(t, append(args, "--nats-url", env.URL)...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s", what, code, errOut)
		}
		terminalSafe(t, what, out)
	}
	code, out, errOut := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "purged 2 dead letters") {
		t.Fatalf("purge of dead letters naming no body the relay stored: exit %d\n%s%s", code, out, errOut)
	}
}
