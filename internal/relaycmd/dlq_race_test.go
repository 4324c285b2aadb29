package relaycmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relaycmd"
	"relay365/internal/roles"
)

// openBodies opens the body store of env's server.
func openBodies(t *testing.T, ctx context.Context, env *queuetest.Env) *body.Store {
	t.Helper()
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// bigDeadLetter stores a body of about 600 KB and dead-letters a message
// of account alerts that names it, as the worker would.
func bigDeadLetter(t *testing.T, ctx context.Context, env *queuetest.Env, store *body.Store, id string) message.BodyRef {
	t.Helper()
	return bigDeadLetterOf(t, ctx, env, store, id, 50000)
}

// bigDeadLetterOf is bigDeadLetter with a body of lines lines of 12 octets.
func bigDeadLetterOf(t *testing.T, ctx context.Context, env *queuetest.Env, store *body.Store, id string, lines int) message.BodyRef {
	t.Helper()
	ref, err := store.Put(ctx, strings.NewReader("Subject: big\r\n\r\n"+strings.Repeat("0123456789\r\n", lines)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: id, Account: "alerts", To: []string{"ops@contoso.com"}, Body: &ref}
	data, _ := m.Encode()
	env.DeadLetter(t, ctx, "alerts", id, data, queue.DeadLetter{ID: id, Account: "alerts", Reason: "test", Class: "transient"})
	return ref
}

// queuedBodiesReadable fails the test unless every message in MAIL that
// names a stored body can read it whole: a copy whose body is gone is
// dead-lettered again by the worker, the mail lost. It returns the names
// of those bodies, in MAIL's order.
func queuedBodiesReadable(t *testing.T, ctx context.Context, env *queuetest.Env, store *body.Store) []string {
	t.Helper()
	s, err := env.JS.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for seq := uint64(1); ; {
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if err != nil {
			return names
		}
		seq = raw.Sequence + 1
		m, err := message.Decode(raw.Data)
		if err != nil || m.Body == nil {
			continue
		}
		names = append(names, m.Body.Object)
		rc, err := store.Open(ctx, *m.Body)
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err != nil {
			t.Fatalf("MAIL sequence %d (message %s) names body %s, which cannot be read: %v", raw.Sequence, m.ID, m.Body.Object, err)
		}
	}
}

// An operator replays a large dead letter while another purges the dead
// letters. The replay reads its dead letter; before it queues the copy
// (its publish held at a proxy), the purge removes the dead letter and
// deletes the body that nothing in MAIL or MAIL_DLQ names yet. The copy
// the replay then queues must still have its body: a replay that says
// "queued again" for a copy naming a deleted body loses the mail (the
// worker dead-letters it for a missing body).
func TestDLQReplayRacingPurgeKeepsTheBody(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	bigDeadLetter(t, ctx, env, store, "big-1")

	proxy := queuetest.StartHoldProxy(t, env.URL, queue.SubjectPrefix)
	wait := runHeld(t, ctx, proxy, "dlq", "replay", "1")
	code, pout, perr := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL)
	t.Logf("purge while the replay's copy is held: exit %d\n%s%s", code, pout, perr)
	rcode, out, errOut := wait()
	t.Logf("replay: exit %d\n%s%s", rcode, out, errOut)
	queued := queuedBodiesReadable(t, ctx, env, store)
	if rcode != 0 || len(queued) != 1 {
		t.Fatalf("replay: exit %d, MAIL holds %d messages with a body, want its copy queued", rcode, len(queued))
	}
	// The copy's body is its own; the dead letter's went with the purge.
	if names, err := store.Names(ctx, time.Now().Add(time.Hour)); err != nil || len(names) != 1 || names[0] != queued[0] {
		t.Fatalf("bodies after the replay and the purge: %v (%v), want the copy's %s", names, err, queued[0])
	}
}

// A purge that removes a dead letter after the replay queued its copy and
// before the replay removes it: the dead letter is gone, the copy queued,
// and the replay must say "queued again", not fail with "queued again
// but still in MAIL_DLQ", which sends the operator after a dead letter
// that is not there (the server answers the late removal with a generic
// error, 10057 "no message found", not "message not found").
func TestDLQReplayRemovedMeanwhileIsReplayed(t *testing.T) {
	env, ctx := deadLetters(t)
	proxy := queuetest.StartHoldProxy(t, env.URL, "$JS.API.STREAM.MSG.DELETE.")
	wait := runHeld(t, ctx, proxy, "dlq", "replay", "1")
	if code, pout, perr := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 {
		t.Fatalf("purge: exit %d\n%s%s", code, pout, perr)
	}
	code, out, errOut := wait()
	t.Logf("replay: exit %d\n%s%s", code, out, errOut)
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 1 {
		t.Fatalf("MAIL holds %d messages, want the replayed copy", n)
	}
	if code != 0 || !strings.Contains(out, "dead letter 1 queued again as MAIL sequence") || strings.Contains(out+errOut, "still in") {
		t.Fatalf("replay of a dead letter purged before its removal: exit %d\n%s%s", code, out, errOut)
	}
}

// A dead letter whose body is gone from the store (dead-lettered for that,
// or deleted by hand) is not replayed: its copy could only be
// dead-lettered again for the missing body. It stays, and the command
// says why.
func TestDLQReplayWithoutItsBodyIsKept(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	ref := bigDeadLetter(t, ctx, env, store, "big-1")
	if err := store.Delete(ctx, ref.Object); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("replay: exit %d\n%s%s", code, out, errOut)
	if code != 1 || !strings.Contains(out, "is not in relay_bodies") || !strings.Contains(errOut, "1 of 1 not replayed (kept in MAIL_DLQ)") {
		t.Fatalf("replay of a dead letter without its body: exit %d\n%s%s", code, out, errOut)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("MAIL holds %d messages, want none", n)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); n != 1 {
		t.Fatalf("MAIL_DLQ holds %d, want the dead letter kept", n)
	}
}

// relay dlq show of a large dead letter says whether its stored body is
// still in relay_bodies: one whose body is gone (deleted by hand, purged
// with an earlier copy) is what replay refuses ("is not in
// relay_bodies"), and show printed its size as if nothing were amiss.
// --json carries it as stored_body ("present", "gone").
func TestDLQShowSaysTheStoredBodyIsGone(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	bigDeadLetter(t, ctx, env, store, "big-1")
	ref := bigDeadLetter(t, ctx, env, store, "big-2")
	if err := store.Delete(ctx, ref.Object); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		seq, state string
		text       []string // in the text form; none for "present"
	}{
		{"2", "gone", []string{"GONE from relay_bodies", "is not in relay_bodies", "replay refuses it"}},
		{"1", "present", nil},
	} {
		code, out, errOut := run(t, "dlq", "show", c.seq, "--nats-url", env.URL)
		if code != 0 || !strings.Contains(out, "Stored-Body: ") || strings.Contains(out, "GONE") != (c.text != nil) {
			t.Fatalf("show %s (body %s): exit %d\n%s%s", c.seq, c.state, code, out, errOut)
		}
		for _, want := range c.text {
			if !strings.Contains(out, want) {
				t.Fatalf("show %s lacks %q:\n%s", c.seq, want, out)
			}
		}
		code, out, errOut = run(t, "dlq", "show", c.seq, "--json", "--nats-url", env.URL)
		var e struct {
			StoredBody string `json:"stored_body"`
			Problem    string `json:"stored_body_problem"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.StoredBody != c.state || (e.Problem != "") != (c.text != nil) {
			t.Fatalf("show %s --json: exit %d, stored_body %q (%q), want %q\n%s%s", c.seq, code, e.StoredBody, e.Problem, c.state, out, errOut)
		}
	}
}

// A replay copying a large dead letter's body while the body is deleted
// (relay dlq purge with the dead letter, or by hand) must say so as soon
// as the next chunk does not come and the object is gone: it waited out
// body.ChunkWait (30 s) first, and then failed as if the store had not
// answered. The copy is held at its first chunk written (a proxy), with
// the reader's first chunks already in; the body (12 chunks) is deleted
// meanwhile. ChunkWait is set far beyond the replay's own deadline
// (runHeld's 20 s): only a read that notices the deletion ends in time.
func TestDLQReplayRacingPurgeOfItsBody(t *testing.T) {
	defer func(w time.Duration) { body.ChunkWait = w }(body.ChunkWait)
	body.ChunkWait = 10 * time.Minute
	for _, c := range []struct {
		name   string
		delete []string // the relay dlq command that deletes the body, or none: by hand
		want   string   // in the replay's error
	}{
		{"purged with its dead letter", []string{"dlq", "purge", "--yes"}, "no dead letter with sequence 1 in MAIL_DLQ"},
		{"body deleted by hand", nil, "is not in relay_bodies"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, ctx := dlqEnv(t)
			store := openBodies(t, ctx, env)
			ref := bigDeadLetterOf(t, ctx, env, store, "big-1", 250000) // 3 MB, 12 chunks
			proxy := queuetest.StartHoldProxy(t, env.URL, "$O."+body.Bucket+".C.")
			wait := runHeld(t, ctx, proxy, "dlq", "replay", "1")
			if c.delete != nil {
				if code, out, errOut := run(t, append(c.delete, "--nats-url", env.URL)...); code != 0 {
					t.Fatalf("%v: exit %d\n%s%s", c.delete, code, out, errOut)
				}
			} else if err := store.Delete(ctx, ref.Object); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := wait()
			t.Logf("replay: exit %d\n%s%s", code, out, errOut)
			if code != 1 || !strings.Contains(out+errOut, c.want) {
				t.Fatalf("replay whose body was deleted during its copy: exit %d, want 1 and %q\n%s%s", code, c.want, out, errOut)
			}
			if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
				t.Fatalf("MAIL holds %d, want nothing queued", n)
			}
			// The copy's chunks went with its failed put.
			if names, err := store.Names(ctx, time.Now().Add(time.Hour)); err != nil || len(names) != 0 {
				t.Fatalf("bodies left: %v (%v), want none", names, err)
			}
		})
	}
}

// A replay whose dead letter could not be removed, run again: the second
// copy is a duplicate of the first, not queued, and the body copied for
// it is deleted at once; the dead letter's body and the first copy's stay.
func TestDLQReplayAgainDeletesTheDuplicatesBody(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	ref := bigDeadLetter(t, ctx, env, store, "big-1")
	denyDLQRemoval(t, ctx, env.JS)
	for i := range 2 {
		code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
		t.Logf("replay %d: exit %d\n%s%s", i+1, code, out, errOut)
		if code != 1 || !strings.Contains(errOut, "1 queued again but still in MAIL_DLQ") {
			t.Fatalf("replay %d with the removal refused: exit %d\n%s%s", i+1, code, out, errOut)
		}
	}
	queued := queuedBodiesReadable(t, ctx, env, store)
	names, _ := store.Names(ctx, time.Now().Add(time.Hour))
	slices.Sort(names)
	want := []string{ref.Object, queued[0]}
	slices.Sort(want)
	if len(queued) != 1 || !slices.Equal(names, want) {
		t.Fatalf("after two replays: MAIL names %v, bodies %v; want one copy and bodies %v", queued, names, want)
	}
}

// relay dlq replay of a large dead letter as relay-admin against a NATS
// that enforces the roles: it may copy the body (read it, write the
// chunks and metadata of a new object) and delete the dead letter's.
func TestDLQReplayCopiesBodyAsAdmin(t *testing.T) {
	worker, dir, as, ctx := roleNATS(t)
	reg, err := account.OpenRegistry(ctx, as(roles.Admin))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	admin, err := body.Open(ctx, as(roles.Admin))
	if err != nil {
		t.Fatal(err)
	}
	ref := bigDeadLetter(t, ctx, worker, body.OpenStoreOnly(as(roles.Producer)), "big-1")
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", worker.URL, "--data-dir", dir, "--timeout", "15s")
	t.Logf("replay: exit %d\n%s%s", code, out, errOut)
	if code != 0 {
		t.Fatalf("replay as relay-admin: exit %d\n%s%s", code, out, errOut)
	}
	queued := queuedBodiesReadable(t, ctx, &queuetest.Env{JS: as(roles.Admin)}, admin)
	names, err := admin.Names(ctx, time.Now().Add(time.Hour))
	if err != nil || len(queued) != 1 || queued[0] == ref.Object || len(names) != 1 || names[0] != queued[0] {
		t.Fatalf("after the replay: MAIL names %v, bodies %v (%v); want one copy of %s, and only its body", queued, names, err, ref.Object)
	}
}

// runHeld runs the relay command line in process against proxy, and
// returns once proxy holds its first matching publish; wait ends it.
func runHeld(t *testing.T, ctx context.Context, proxy *queuetest.HoldProxy, args ...string) (wait func() (code int, stdout, stderr string)) {
	t.Helper()
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- relaycmd.Run(rctx, append(args, "--nats-url", proxy.URL), relaycmd.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
	}()
	select {
	case <-proxy.Held:
	case code := <-done:
		t.Fatalf("%v ended (exit %d) before the proxy held it\n%s%s", args, code, out.String(), errOut.String())
	case <-ctx.Done():
		t.Fatalf("%v: the proxy never held it", args)
	}
	return func() (int, string, string) {
		proxy.Release()
		select {
		case code := <-done:
			return code, out.String(), errOut.String()
		case <-ctx.Done():
			t.Fatalf("%v did not end", args)
			return 0, "", ""
		}
	}
}

// Dead letters removed (replayed, purged by another operator) between
// relay dlq list's count and its read: list prints what is there. It
// asked for as many as it had counted and waited out the pull's 5-second
// expiry for the missing ones; with none left it failed ("3 dead letters
// announced, none arrived"). The read is held at a proxy until the
// removal is done.
func TestDLQListAfterRemovalsSinceTheCount(t *testing.T) {
	for _, c := range []struct {
		name   string
		remove []string // relay dlq commands run while list is held
		args   []string
		want   string
	}{
		{"table, all gone", []string{"purge", "--yes"}, []string{"dlq", "list"}, "no dead letters\n"},
		{"json, all gone", []string{"purge", "--yes"}, []string{"dlq", "list", "--json"}, ""},
		{"table, last gone", []string{"replay", "3"}, []string{"dlq", "list"}, "2 dead letters"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, ctx := deadLetters(t)
			proxy := queuetest.StartHoldProxy(t, env.URL, "$JS.API.CONSUMER.CREATE."+queue.StreamDLQ)
			wait := runHeld(t, ctx, proxy, c.args...)
			if code, out, errOut := run(t, append(append([]string{"dlq"}, c.remove...), "--nats-url", env.URL)...); code != 0 {
				t.Fatalf("%v: exit %d\n%s%s", c.remove, code, out, errOut)
			}
			code, out, errOut := wait()
			t.Logf("%v: exit %d\n%s%s", c.args, code, out, errOut)
			if code != 0 || !strings.Contains(out, c.want) || (c.want == "" && out != "") {
				t.Fatalf("%v after removals since its count: exit %d\n%s%s", c.args, code, out, errOut)
			}
		})
	}
}

// A purge that removes a large dead letter and its body while the replay
// is about to copy that body: the replay must not say the dead letter is
// "not replayed (kept in MAIL_DLQ)" (it is gone, purged) but that it is
// gone, as for any dead letter purged before its replay. The replay is
// held at its first request about the body store.
func TestDLQReplayOfADeadLetterPurgedBeforeItsCopy(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	bigDeadLetter(t, ctx, env, store, "big-1")
	proxy := queuetest.StartHoldProxy(t, env.URL, "$JS.API.STREAM.INFO."+body.StreamName)
	wait := runHeld(t, ctx, proxy, "dlq", "replay", "1")
	if code, out, errOut := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 {
		t.Fatalf("purge: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := wait()
	t.Logf("replay: exit %d\n%s%s", code, out, errOut)
	if code != 1 || strings.Contains(out+errOut, "kept") || !strings.Contains(errOut, "no dead letter with sequence 1 in MAIL_DLQ") {
		t.Fatalf("replay of a dead letter purged before its copy: exit %d\n%s%s", code, out, errOut)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("MAIL holds %d, want nothing queued", n)
	}
}

// A replay that MAIL refuses as full (at the first attempt, so no copy
// can have been stored) leaves no copied body behind: the dead letter
// and its own body stay, and nothing else is left for the sweeper.
func TestDLQReplayRefusedAsFullLeavesNoCopy(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	ref := bigDeadLetter(t, ctx, env, store, "big-1")
	queuetest.LimitStream(t, ctx, env.JS, queue.StreamMail, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	if _, err := queue.Publish(ctx, env.JS, "alerts", "filler", []byte(`{"id":"filler"}`)); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL)
	t.Logf("replay into a full MAIL: exit %d\n%s%s", code, out, errOut)
	if code != 1 || !strings.Contains(errOut, "1 of 1 not replayed (kept in MAIL_DLQ)") {
		t.Fatalf("replay into a full MAIL: exit %d\n%s%s", code, out, errOut)
	}
	if names, err := store.Names(ctx, time.Now().Add(time.Hour)); err != nil || len(names) != 1 || names[0] != ref.Object {
		t.Fatalf("bodies after the refused replay: %v (%v), want only the dead letter's %s", names, err, ref.Object)
	}
}

// namesAtProgress records, at each progress line of a replay that says a
// dead letter was queued again, how many bodies the store holds.
type namesAtProgress struct {
	t     *testing.T
	ctx   context.Context
	store *body.Store
	buf   bytes.Buffer
	seen  []int
}

func (w *namesAtProgress) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("queued again as")) {
		names, err := w.store.Names(w.ctx, time.Now().Add(time.Hour))
		if err != nil {
			w.t.Error(err)
		}
		w.seen = append(w.seen, len(names))
	}
	return w.buf.Write(p)
}

// replay --all of many large dead letters deletes their former bodies as
// it goes (every replayCleanEvery bytes, here every one), not only at its
// end: the store held every body twice until then.
func TestDLQReplayAllCleansUpAsItGoes(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	for i := range 3 {
		bigDeadLetter(t, ctx, env, store, fmt.Sprintf("big-%d", i))
	}
	relaycmd.SetReplayCleanEvery(t.Cleanup, 1)
	w := &namesAtProgress{t: t, ctx: ctx, store: store}
	var errOut bytes.Buffer
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := relaycmd.Run(rctx, []string{"dlq", "replay", "--all", "--nats-url", env.URL}, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: w, Stderr: &errOut})
	t.Logf("replay --all: exit %d\n%s%s", code, w.buf.String(), errOut.String())
	// After each replay: its copy's body, and the bodies of the dead
	// letters not replayed yet; none of those replayed.
	if code != 0 || !slices.Equal(w.seen, []int{3, 3, 3}) {
		t.Fatalf("replay --all: exit %d, bodies at each dead letter queued %v, want [3 3 3]", code, w.seen)
	}
}

// A replay that removes a dead letter after the purge counted them and
// before its purge request: the purge must say how many it purged, not
// count the replayed one (it said "purged 3" of 3 dead letters, one of
// which the replay had queued again: an operator who reads that believes
// the mail dropped).
func TestDLQPurgeCountsOnlyWhatItPurged(t *testing.T) {
	env, ctx := deadLetters(t)
	proxy := queuetest.StartHoldProxy(t, env.URL, "$JS.API.STREAM.PURGE."+queue.StreamDLQ)
	wait := runHeld(t, ctx, proxy, "dlq", "purge", "--yes")
	if code, out, errOut := run(t, "dlq", "replay", "1", "--nats-url", env.URL); code != 0 {
		t.Fatalf("replay: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := wait()
	t.Logf("purge: exit %d\n%s%s", code, out, errOut)
	if code != 0 || !strings.Contains(out, "purged 2 dead letters of all accounts") {
		t.Fatalf("purge beside a replay: exit %d\n%s%s", code, out, errOut)
	}
	if d, m := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ), queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); d != 0 || m != 1 {
		t.Fatalf("MAIL_DLQ %d, MAIL %d; want 0 and the replayed copy", d, m)
	}
}

// A replay whose copy of the stored body fails (its --timeout spent on a
// store that does not answer) and whose question whether the dead letter
// is still there cannot be answered either: nothing is queued, and the
// dead letter may have been purged meanwhile. The per-letter line says
// so; the summary must too, not count it as "not replayed (kept in
// MAIL_DLQ)". The proxy holds the copy's first chunk, and everything
// after it, until the command has ended.
func TestDLQReplayUnansweredCheckIsNotCountedAsKept(t *testing.T) {
	env, ctx := dlqEnv(t)
	store := openBodies(t, ctx, env)
	bigDeadLetter(t, ctx, env, store, "big-1")
	proxy := queuetest.StartHoldProxy(t, env.URL, "$O."+body.Bucket+".C.")
	code, out, errOut := run(t, "dlq", "replay", "1", "--timeout", "1s", "--nats-url", proxy.URL)
	t.Logf("replay: exit %d\n%s%s", code, out, errOut)
	select {
	case <-proxy.Held:
	default:
		t.Fatal("the proxy never held the copy of the body")
	}
	if code != 1 || !strings.Contains(out, "could not be read") ||
		!strings.Contains(errOut, "1 of 1 not replayed, and whether still in MAIL_DLQ unknown") || strings.Contains(errOut, "kept in") {
		t.Fatalf("replay whose check went unanswered: exit %d\n%s%s", code, out, errOut)
	}
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 0 {
		t.Fatalf("MAIL holds %d messages, want none", n)
	}
}
