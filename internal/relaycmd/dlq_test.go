package relaycmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relaycmd"
)

// run runs the relay command line in process.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code = relaycmd.Run(ctx, args, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
	return code, out.String(), errOut.String()
}

// deadLetters puts three messages into MAIL_DLQ the way the worker does.
func deadLetters(t *testing.T) (*queuetest.Env, context.Context) {
	t.Helper()
	env, ctx := dlqEnv(t)
	for _, d := range []struct{ account, id, reason, class, reply string }{
		{"alerts", "a-1", "smtp data: 550 5.7.60 SMTP; Client does not have permissions to send as this sender", "message", "550 5.7.60 SMTP; Client does not have permissions to send as this sender"},
		{"alerts", "a-2", "invalid message: to: no recipients (give at least one of to, cc, bcc)", "invalid", ""},
		{"billing", "b-1", "smtp data: 552 5.3.4 Message size exceeds fixed maximum message size", "message", "552 5.3.4 Message size exceeds fixed maximum message size"},
	} {
		env.DeadLetter(t, ctx, d.account, d.id, []byte(`{"id":"`+d.id+`","subject":"s"}`),
			queue.DeadLetter{ID: d.id, Account: d.account, Reason: d.reason, Class: d.class, LastReply: d.reply})
	}
	return env, ctx
}

// dlqEnv starts NATS with the streams and the accounts the dead letters
// of these tests belong to, alerts and billing (a replay for an account
// that is not configured is refused).
func dlqEnv(t *testing.T) (*queuetest.Env, context.Context) {
	t.Helper()
	env, ctx := queuetest.StartMail(t)
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, alias := range []string{"alerts", "billing"} {
		if err := reg.Put(ctx, account.Account{Alias: alias, Mailbox: alias + "@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	return env, ctx
}

// A dead letter of an account since removed is not replayed (relay serve
// would only dead-letter it again as "no such account"): it stays, and the
// command says why and what to do; the others of --all are replayed.
func TestDLQReplayRefusesAnAccountNotConfigured(t *testing.T) {
	env, ctx := deadLetters(t)
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, "billing"); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "dlq", "replay", "--all", "--nats-url", env.URL)
	if code != 1 || !strings.Contains(out, `no account "billing" is configured`) || !strings.Contains(out, "authtool login") ||
		!strings.Contains(errOut, "1 of 3 not replayed (kept in MAIL_DLQ): 3") {
		t.Fatalf("replay --all: exit %d\n%s%s", code, out, errOut)
	}
	left, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	if err != nil || len(left) != 1 || left[0].Account != "billing" {
		t.Fatalf("dead letters left: %+v (%v), want billing's", left, err)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 2 {
		t.Fatalf("MAIL holds %d, want alerts' two messages", n)
	}
	code, out, errOut = run(t, "dlq", "replay", strconv.FormatUint(left[0].Seq, 10), "--nats-url", env.URL)
	if code != 1 || !strings.Contains(out, `no account "billing" is configured`) {
		t.Fatalf("replay SEQ: exit %d\n%s%s", code, out, errOut)
	}
}

func TestDLQListAndShow(t *testing.T) {
	env, _ := deadLetters(t)
	code, out, errOut := run(t, "dlq", "list", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "3 dead letters") || !strings.Contains(out, "a-2") || !strings.Contains(out, "552 5.3.4") {
		t.Fatalf("list: %d\n%s%s", code, out, errOut)
	}
	if _, out, _ := run(t, "dlq", "list", "--nats-url", env.URL, "--account", "alerts"); !strings.Contains(out, "2 dead letters") || strings.Contains(out, "b-1") {
		t.Fatalf("list --account:\n%s", out)
	}
	code, out, _ = run(t, "dlq", "list", "--nats-url", env.URL, "--reason", "SEND AS", "--json")
	var e struct {
		Seq       uint64          `json:"seq"`
		ID        string          `json:"id"`
		LastReply string          `json:"last_reply"`
		Message   json.RawMessage `json:"message"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.ID != "a-1" || e.Seq != 1 || !strings.HasPrefix(e.LastReply, "550 5.7.60") || len(e.Message) == 0 {
		t.Fatalf("list --reason --json: %d %q", code, out)
	}
	code, out, _ = run(t, "dlq", "show", "3", "--nats-url", env.URL)
	for _, want := range []string{"Sequence: 3", "Account: billing", "Relay-Reason: smtp data: 552 5.3.4", "Relay-Class: message",
		"Relay-Attempts: 1", "Relay-Original-Subject: mail.send.billing", "Relay-First-Attempt: ", "Relay-Last-Attempt: ", `"id": "b-1"`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("show lacks %q:\n%s", want, out)
		}
	}
	// A message handed over whole (SMTP, sendmail) shows as text, not base64.
	raw := "From: cron@contoso.com\r\nSubject: backup failed\r\n\r\nexit 3\r\n"
	rawJSON, err := json.Marshal(map[string]any{"id": "r-1", "account": "alerts", "to": []string{"ops@contoso.com"}, "raw": []byte(raw)})
	if err != nil {
		t.Fatal(err)
	}
	env.DeadLetter(t, context.Background(), "alerts", "r-1", rawJSON, queue.DeadLetter{ID: "r-1", Account: "alerts", Reason: "r", Class: "message"})
	code, out, _ = run(t, "dlq", "show", "4", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "Subject: backup failed\nexit 3") && !strings.Contains(out, "Subject: backup failed\n\nexit 3") ||
		!strings.Contains(out, `"id": "r-1"`) || strings.Contains(out, `"raw"`) {
		t.Fatalf("show of a raw message:\n%s", out)
	}
	if code, _, errOut := run(t, "dlq", "show", "99", "--nats-url", env.URL); code != 1 || !strings.Contains(errOut, "no dead letter with sequence 99") {
		t.Fatalf("show 99: %d %s", code, errOut)
	}
}

func TestDLQReplayAndPurge(t *testing.T) {
	env, ctx := deadLetters(t)
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "[1/1] dead letter 1 queued again as MAIL sequence 4") {
		t.Fatalf("replay 1: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, "dlq", "replay", "--all", "--account", "alerts", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "[1/1] dead letter 2") || !strings.Contains(out, "replayed 1 dead letters") {
		t.Fatalf("replay --all --account alerts: %d\n%s", code, out)
	}
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	info, _ := mail.Info(ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("MAIL holds %d after two replays", info.State.Msgs)
	}
	m, err := mail.GetMsg(ctx, 4)
	if err != nil || m.Subject != "mail.send.alerts" || m.Header.Get(jetstream.MsgIDHeader) != "a-1:replay:1" || m.Header.Get(queue.HdrReason) != "" {
		t.Fatalf("replayed message: %+v %v", m, err)
	}
	// Purge wants a confirmation.
	if code, _, errOut := run(t, "dlq", "purge", "--nats-url", env.URL); code != 2 || !strings.Contains(errOut, "--yes") {
		t.Fatalf("purge without --yes: %d %s", code, errOut)
	}
	if code, out, _ := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 || !strings.Contains(out, "purged 1 dead letters of all accounts") {
		t.Fatalf("purge: %d %s", code, out)
	}
	if _, out, _ := run(t, "dlq", "list", "--nats-url", env.URL); !strings.Contains(out, "no dead letters") {
		t.Fatalf("after purge:\n%s", out)
	}
}

func TestDLQUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"dlq"},
		{"dlq", "resend"},
		{"dlq", "show"},
		{"dlq", "show", "x"},
		{"dlq", "replay"},
		{"dlq", "replay", "3", "--all"},
		{"dlq", "replay", "3", "--account", "alerts"},
		{"dlq", "list", "extra"},
		{"dlq", "list", "--account", "Not.An.Alias"},
		// Not "no timeout": every request would fail at once.
		{"dlq", "list", "--timeout", "0"},
		{"dlq", "replay", "--all", "--timeout", "-1s"},
	} {
		// No server: a usage error must be found before connecting.
		if code, _, errOut := run(t, append(args, "--nats-url", "nats://127.0.0.1:1")...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with the reason", args, code, errOut)
		}
	}
}

// A dead letter whose content is in the body store: show prints its size,
// replay queues a copy that names a copy of the body (and deletes the
// dead letter's), purge deletes the bodies of what it purges and no other.
func TestDLQStoredBodies(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	put := func() message.BodyRef {
		ref, err := store.Put(ctx, strings.NewReader("Subject: big\r\n\r\n"+strings.Repeat("0123456789\r\n", 50000)), message.MaxSize)
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	kept, replayed, purged := put(), put(), put()
	for i, ref := range []message.BodyRef{replayed, purged} {
		id := fmt.Sprintf("big-%d", i)
		m := &message.Message{ID: id, Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref}
		data, _ := m.Encode()
		env.DeadLetter(t, ctx, "alerts", id, data, queue.DeadLetter{ID: id, Account: "alerts", Reason: "test", Class: "transient"})
	}
	m := &message.Message{ID: "queued", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &kept}
	data, _ := m.Encode()
	if _, err := queue.Publish(ctx, env.JS, "alerts", "queued", data); err != nil {
		t.Fatal(err)
	}
	code, out, _ := run(t, "dlq", "show", "1", "--nats-url", env.URL)
	if want := fmt.Sprintf("Stored-Body: %s, %d bytes (0.6 MB)", replayed.Object, replayed.Size); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("show lacks %q:\n%s", want, out)
	}
	if code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL); code != 0 {
		t.Fatalf("replay: %d %s%s", code, out, errOut)
	}
	if code, out, _ := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 || !strings.Contains(out, "purged 1 dead letters") {
		t.Fatalf("purge: %d %s", code, out)
	}
	names, err := store.Names(ctx, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	want := queuedBodiesReadable(t, ctx, env, store) // kept's, then the replayed copy's
	if len(want) != 2 || want[0] != kept.Object || want[1] == replayed.Object {
		t.Fatalf("bodies named in MAIL %v, want %s and a copy of %s", want, kept.Object, replayed.Object)
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("bodies after purge %v, want the queued and the replayed one %v", names, want)
	}
}

// The usage of relay dlq names every flag its commands take: --json was
// there for list and show, and not in the usage.
func TestDLQUsageNamesJSON(t *testing.T) {
	code, out, errOut := run(t, "dlq")
	if strings.Count(out+errOut, "--json") < 2 {
		t.Fatalf("relay dlq (exit %d) does not name --json for list and show:\n%s%s", code, out, errOut)
	}
}
