package relaycmd_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relaycmd"
	"relay365/internal/roles"
)

// A replay whose PubAck came but whose removal from MAIL_DLQ failed (the
// stream refuses deletes here; a timeout does the same) leaves the dead
// letter beside its queued copy. A purge then must not delete the body
// the queued copy names: that copy is mail the relay still has to send.
func TestDLQPurgeKeepsBodyOfQueuedReplay(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	ref, err := store.Put(ctx, strings.NewReader("Subject: big\r\n\r\n"+strings.Repeat("0123456789\r\n", 50000)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: "big-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref}
	data, _ := m.Encode()
	env.DeadLetter(t, ctx, "alerts", "big-1", data, queue.DeadLetter{ID: "big-1", Account: "alerts", Reason: "test", Class: "transient"})

	denyDLQRemoval(t, ctx, env.JS)
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("replay with the removal refused: exit %d\n%s%s", code, out, errOut)
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 1 {
		t.Fatalf("MAIL holds %d messages after the replay, want its copy", n)
	}
	if code, out, errOut := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 {
		t.Fatalf("purge: %d %s%s", code, out, errOut)
	}
	// The copy names a body of its own (relay dlq replay copies it); the
	// dead letter's goes with the dead letter.
	queued := queuedBodiesReadable(t, ctx, env, store)
	names, _ := store.Names(ctx, time.Now().Add(time.Hour))
	if len(queued) != 1 || queued[0] == ref.Object || len(names) != 1 || names[0] != queued[0] {
		t.Fatalf("bodies after the purge %v, want only that of the copy queued in MAIL %v", names, queued)
	}
}

// hookWriter collects output and runs f once, at the first write.
type hookWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	once sync.Once
	f    func()
}

func (w *hookWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	n, err := w.buf.Write(p)
	w.mu.Unlock()
	w.once.Do(w.f)
	return n, err
}

func (w *hookWriter) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.buf.String() }

// Two operators replay at the same time: one replays --all, the other
// replays dead letter 2 after the first listed it. Every dead letter is
// queued once; the --all run must not call dead letter 2 "not replayed,
// kept in MAIL_DLQ" and fail, since it is neither.
func TestDLQReplayAllBesideAnotherReplay(t *testing.T) {
	env, ctx := deadLetters(t)
	var other string
	w := &hookWriter{f: func() {
		code, out, errOut := run(t, "dlq", "replay", "2", "--nats-url", env.URL)
		other = fmt.Sprintf("%d %s%s", code, out, errOut)
	}}
	var errOut bytes.Buffer
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := relaycmd.Run(rctx, []string{"dlq", "replay", "--all", "--nats-url", env.URL}, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: w, Stderr: &errOut})
	out := w.String()
	t.Logf("other operator: %s\n--all: exit %d\n%s%s", other, code, out, errOut.String())
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 3 {
		t.Fatalf("MAIL holds %d messages, want the 3 dead letters once each", n)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); n != 0 {
		t.Fatalf("MAIL_DLQ holds %d, want none", n)
	}
	if code != 0 || strings.Contains(out+errOut.String(), "kept in") || !strings.Contains(out, "dead letter 2: gone already") {
		t.Fatalf("--all beside another replay: exit %d\n%s%s", code, out, errOut.String())
	}
}

// A replay --all cut short (its --timeout, ^C) must name every dead letter
// it did not replay, not only the one it was at.
func TestDLQReplayAllInterruptedNamesTheRest(t *testing.T) {
	env, ctx := deadLetters(t)
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := &hookWriter{f: cancel}
	var errOut bytes.Buffer
	code := relaycmd.Run(rctx, []string{"dlq", "replay", "--all", "--nats-url", env.URL}, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: w, Stderr: &errOut})
	out := w.String()
	left := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ)
	t.Logf("exit %d, %d left in MAIL_DLQ\n%s%s", code, left, out, errOut.String())
	if code == 0 || left != 2 || !strings.Contains(errOut.String(), "2 of 3 not replayed") || !strings.Contains(errOut.String(), ": 2, 3") {
		t.Fatalf("interrupted --all: exit %d, %d left\n%s%s", code, left, out, errOut.String())
	}
}

// A replay that queued its copy but could not remove the dead letter must
// say so, not "not replayed (kept in MAIL_DLQ)": the mail is queued, and
// the operator who believes otherwise replays or purges it.
func TestDLQReplayQueuedNotRemovedSaysQueued(t *testing.T) {
	env, ctx := deadLetters(t)
	denyDLQRemoval(t, ctx, env.JS)
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("exit %d\n%s%s", code, out, errOut)
	if code != 1 || strings.Contains(out+errOut, "not replayed") || !strings.Contains(errOut, "1 queued again but still in MAIL_DLQ") {
		t.Fatalf("replay with the removal refused: exit %d\n%s%s", code, out, errOut)
	}
}

// After a bad deploy there are thousands of dead letters: the table is
// bounded and says how many it left out; --limit 0 shows them all.
func TestDLQListBounded(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	const n = 130
	for i := range n {
		id := fmt.Sprintf("d-%d", i)
		env.DeadLetter(t, ctx, "alerts", id, []byte(`{"id":"`+id+`"}`), queue.DeadLetter{ID: id, Account: "alerts", Reason: "bad deploy", Class: "invalid"})
	}
	code, out, errOut := run(t, "dlq", "list", "--nats-url", env.URL)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) > 102 || !strings.Contains(out, "of 130 dead letters") || !strings.HasPrefix(lines[1], "1 ") {
		t.Fatalf("list of %d: exit %d, %d lines, ends %q%s", n, code, len(lines), lines[len(lines)-1], errOut)
	}
	code, out, _ = run(t, "dlq", "list", "--limit", "0", "--nats-url", env.URL)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != n+2 || !strings.Contains(out, "130 dead letters") {
		t.Fatalf("list --limit 0: exit %d, %d lines", code, len(lines))
	}
}

// denyDLQRemoval makes MAIL_DLQ refuse to delete a message, as a replay's
// removal can fail after its copy is queued.
func denyDLQRemoval(t *testing.T, ctx context.Context, js jetstream.JetStream) {
	t.Helper()
	dlq, err := js.Stream(ctx, queue.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	cfg := dlq.CachedInfo().Config
	cfg.DenyDelete = true
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// The same dead letter replayed twice (a command run again from the shell
// history, two operators on one page): the second finds nothing and must
// say so, not "not replayed (kept in MAIL_DLQ)", which sends the operator
// looking for a dead letter that is gone and whose copy is queued.
func TestDLQReplaySameSeqTwice(t *testing.T) {
	env, ctx := deadLetters(t)
	if code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL); code != 0 {
		t.Fatalf("first replay: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("second replay: exit %d\n%s%s", code, out, errOut)
	if code != 1 || strings.Contains(out+errOut, "kept in") || strings.Contains(out+errOut, "FAILED") ||
		!strings.Contains(errOut, "no dead letter with sequence 1 in MAIL_DLQ") {
		t.Fatalf("second replay of 1: exit %d\n%s%s", code, out, errOut)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 1 {
		t.Fatalf("MAIL holds %d messages, want the one replayed copy", n)
	}
}

// relay dlq run with another role's credentials (the worker's seed, or a
// producer's, at 3 a.m. on the wrong host): NATS refuses the requests
// without answering them, only with an asynchronous permissions error.
// The command must end at once and say so, not wait out --timeout and
// report "context deadline exceeded"; a replay refused its removal from
// MAIL_DLQ must still say that the copy is queued.
func TestDLQWrongRoleEndsAtOnce(t *testing.T) {
	worker, dir, as, ctx := roleNATS(t)
	url := worker.URL
	worker.DeadLetter(t, ctx, "alerts", "a-1", []byte(`{"id":"a-1"}`), queue.DeadLetter{ID: "a-1", Account: "alerts", Reason: "r", Class: "invalid"})

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		// The admin's reply inbox, which only relay-admin may subscribe to.
		{"worker seed", []string{"list", "--nats-nkey", roles.SeedFile(dir, roles.Worker)}, "Permissions Violation"},
		// Its own inbox: MAIL_DLQ is not the producer's to read.
		{"producer", []string{"list", "--nats-nkey", roles.SeedFile(dir, roles.Producer), "--nats-inbox-prefix", roles.Producer.InboxPrefix()}, "Permissions Violation"},
		// Its own inbox: the worker may read a dead letter, not do all a
		// replay does; nothing is queued, the dead letter stays.
		{"worker replay", []string{"replay", "1", "--nats-nkey", roles.SeedFile(dir, roles.Worker), "--nats-inbox-prefix", roles.Worker.InboxPrefix()}, "1 of 1 not replayed (kept in MAIL_DLQ): 1"},
	} {
		start := time.Now()
		code, out, errOut := run(t, append(append([]string{"dlq"}, tt.args...), "--nats-url", url, "--timeout", "15s")...)
		took := time.Since(start)
		t.Logf("%s: exit %d after %v\n%s%s", tt.name, code, took.Round(time.Millisecond), out, errOut)
		if code != 1 || !strings.Contains(errOut, tt.want) || !strings.Contains(errOut, "relay-admin") {
			t.Errorf("%s: exit %d after %v, want 1 at once, naming %q and relay-admin:\n%s%s", tt.name, code, took, tt.want, out, errOut)
		}
	}
	if n := queuetest.Msgs(t, ctx, as(roles.Admin), queue.StreamMail); n != 0 {
		t.Errorf("MAIL holds %d messages after the refused replay, want none", n)
	}
	if n := queuetest.Msgs(t, ctx, as(roles.Admin), queue.StreamDLQ); n != 1 {
		t.Errorf("MAIL_DLQ holds %d dead letters after the refused replay, want the one", n)
	}
}

// roleNATS starts JetStream as relay serve runs it, with the roles'
// users and permissions (their seeds in dir, as in the relay's data
// directory), and the streams. It returns the worker's client as an Env
// (to dead-letter the worker's way, with its rights) and as, a client of
// any role.
func roleNATS(t *testing.T) (worker *queuetest.Env, dir string, as func(roles.Role) jetstream.JetStream, ctx context.Context) {
	t.Helper()
	rs := queuetest.StartRoles(t)
	as = func(r roles.Role) jetstream.JetStream {
		_, js := rs.As(t, r)
		return js
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := queue.EnsureStreams(ctx, as(roles.Admin), queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return &queuetest.Env{Server: rs.Server, JS: as(roles.Worker), URL: rs.URL}, rs.Dir, as, ctx
}

// relay dlq purge as the runbook runs it, as relay-admin against a NATS
// that enforces the roles: the bodies of the large dead letters it
// purges are deleted with them (the tests above run without users, where
// every subject is allowed).
func TestDLQPurgeDeletesBodiesAsAdmin(t *testing.T) {
	worker, dir, as, ctx := roleNATS(t)
	store := body.OpenStoreOnly(as(roles.Producer))
	ref, err := store.Put(ctx, strings.NewReader("Subject: big\r\n\r\n"+strings.Repeat("0123456789\r\n", 50000)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: "big-1", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref}
	data, _ := m.Encode()
	worker.DeadLetter(t, ctx, "alerts", "big-1", data, queue.DeadLetter{ID: "big-1", Account: "alerts", Reason: "test", Class: "message"})

	code, out, errOut := run(t, "dlq", "purge", "--yes", "--nats-url", worker.URL, "--data-dir", dir, "--timeout", "15s")
	t.Logf("purge: exit %d\n%s%s", code, out, errOut)
	if code != 0 || !strings.Contains(out, "purged 1 dead letters") {
		t.Fatalf("purge as relay-admin: exit %d\n%s%s", code, out, errOut)
	}
	admin, err := body.Open(ctx, as(roles.Admin))
	if err != nil {
		t.Fatal(err)
	}
	if names, err := admin.Names(ctx, time.Now().Add(time.Hour)); err != nil || len(names) != 0 {
		t.Fatalf("bodies after the purge: %v (%v), want none", names, err)
	}
}

// The table of relay dlq list shows only what the headers say, so it
// reads only them: after an incident with thousands of large inline
// dead letters the command held them all in memory (and pulled them all
// over the network) to print a hundred lines.
func TestDLQListReadsOnlyHeaders(t *testing.T) {
	env, ctx := dlqEnv(t)
	const n = 20
	pad := strings.Repeat("a", 1<<20)
	for i := range n {
		id := fmt.Sprintf("big-%d", i)
		env.DeadLetter(t, ctx, "alerts", id, []byte(`{"id":"`+id+`","text":"`+pad+`"}`), queue.DeadLetter{ID: id, Account: "alerts", Reason: "r", Class: "invalid"})
	}
	sent := func() int64 {
		v, err := env.Server.Varz(nil)
		if err != nil {
			t.Fatal(err)
		}
		return v.OutBytes
	}
	before := sent()
	code, out, errOut := run(t, "dlq", "list", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d dead letters", n)) || !strings.Contains(out, "big-19") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	if got := sent() - before; got > 1<<20 {
		t.Fatalf("relay dlq list read %d bytes for a table of %d dead letters of 1 MiB: their content too", got, n)
	}
}

// A replay queued but not removed tells the operator how long replaying
// it again is recognised as a duplicate: MAIL's duplicate window, which a
// short --queue-lifetime cuts below 24 hours (queue.DuplicatesFor). The
// message said 24 hours whatever the window was.
func TestDLQReplayQueuedNotRemovedNamesMAILsWindow(t *testing.T) {
	env, ctx := deadLetters(t)
	lifetime := time.Hour // MAIL's window: MaxAgeFor(1h), 1h24m
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{Lifetime: lifetime}); err != nil {
		t.Fatal(err)
	}
	denyDLQRemoval(t, ctx, env.JS)
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	want := "replayed again within " + queue.DuplicatesFor(lifetime).String()
	if code != 1 || !strings.Contains(errOut, "1 queued again but still in MAIL_DLQ") || !strings.Contains(errOut, want) {
		t.Fatalf("replay with the removal refused: exit %d, want %q\n%s%s", code, want, out, errOut)
	}
}

// relay dlq pointed at a NATS without the relay's streams (another
// server, a --nats-url typo that reached a fresh one, a cluster before
// relay setup) must say so, and replay SEQ must not call the dead letter
// "kept in MAIL_DLQ" when there is no MAIL_DLQ.
func TestDLQWithoutTheStreams(t *testing.T) {
	env := queuetest.Start(t)
	for _, args := range [][]string{{"list"}, {"show", "1"}, {"replay", "1"}, {"replay", "--all"}, {"purge", "--yes"}} {
		code, out, errOut := run(t, append(append([]string{"dlq"}, args...), "--nats-url", env.URL)...)
		if code != 1 || strings.Contains(out+errOut, "kept in") || !strings.Contains(errOut, "stream not found (on "+env.URL+": is it the relay's NATS?") {
			t.Errorf("%v on a NATS without MAIL_DLQ: exit %d\n%s%s", args, code, out, errOut)
		}
	}
}

// relay producer and relay setup, run with another role's credentials,
// end at NATS's refusal and say which user they need, as relay dlq does;
// they waited out --timeout and said "context deadline exceeded".
func TestAdminCommandsWithAnotherRoleEndAtTheRefusal(t *testing.T) {
	worker, dir, _, _ := roleNATS(t)
	for _, args := range [][]string{
		{"producer", "list"},
		{"setup"},
	} {
		code, out, errOut := run(t, append(args, "--nats-url", worker.URL, "--nats-nkey", roles.SeedFile(dir, roles.Worker), "--timeout", "30s")...)
		if code != 1 || !strings.Contains(errOut, "Permissions Violation") || !strings.Contains(errOut, "relay-admin") {
			t.Errorf("%v as the worker: exit %d, want 1 naming the refusal and relay-admin:\n%s%s", args, code, out, errOut)
		}
	}
}
