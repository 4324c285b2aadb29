package relaycmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue/queuetest"
)

// natsDown is a NATS URL nothing listens on: connecting is refused at
// once, which relay sendmail answers with 75 (or the spool).
const natsDown = "nats://127.0.0.1:1"

// spoolNames lists every file in dir, temporary ones included.
func spoolNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// spoolOne runs relay sendmail against a NATS that is down, with the
// spool dir, and returns the one message it kept there and its path.
func spoolOne(t *testing.T, dir, in string, rcpt string) (*message.Message, string) {
	t.Helper()
	before := len(spoolNames(t, dir))
	vars := map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": dir}
	r := run(t, vars, in, "sendmail", "--timeout", "5s", rcpt)
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("NATS down, spool there: exit %d, stdout %q, stderr %q; want 0 and silence", r.code, r.stdout, r.stderr)
	}
	names := spoolNames(t, dir)
	if len(names) != before+1 {
		t.Fatalf("spool holds %q, want %d file(s)", names, before+1)
	}
	for _, name := range names {
		if !strings.HasSuffix(name, spoolSuffix) {
			t.Fatalf("spool holds %q: a temporary file was left behind", names)
		}
		path := filepath.Join(dir, name)
		m, account, err := readSpool(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == m.ID+spoolSuffix && account == "alerts" && reflect.DeepEqual(m.To, []string{rcpt}) {
			return m, path
		}
	}
	t.Fatalf("no spooled file for %s in %q", rcpt, names)
	return nil, ""
}

// TestSendmailSpool: with NATS down and the spool there, the message is
// kept (exit 0, one 0600 file that decodes to it); relay sendmail -q,
// NATS back, queues it with its own id as the Nats-Msg-Id and removes
// the file; the same file flushed again is a duplicate JetStream drops.
func TestSendmailSpool(t *testing.T) {
	dir := t.TempDir()
	m, path := spoolOne(t, dir, "Subject: disk\n\n92% full\n", "ops@contoso.com")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("spool file mode %v, want 0600", fi.Mode().Perm())
	}
	if len(m.ID) != 32 || m.Account != "alerts" || string(m.Raw) != "Subject: disk\r\n\r\n92% full\r\n" {
		t.Fatalf("spooled %+v, raw %q", m, m.Raw)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	env, ctx := queuetest.StartMail(t)
	// No RELAY_ACCOUNT: the account comes from the file.
	flush := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}
	if r := run(t, flush, "", "sendmail", "-q"); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("-q: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("after -q the spool holds %q", names)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d messages in MAIL, want 1", n)
	}
	sm, q := queued(t, ctx, env.JS, 1)
	if sm.Subject != "mail.send.alerts" || sm.Header.Get(jetstream.MsgIDHeader) != m.ID || q.ID != m.ID ||
		string(q.Raw) != string(m.Raw) || !reflect.DeepEqual(q.To, m.To) {
		t.Fatalf("queued on %s (%v): %+v, want the spooled %+v", sm.Subject, sm.Header, q, m)
	}

	// A flusher that died between the publish and the removal, or two
	// at once: the same file again is a duplicate, and removed.
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, flush, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q again: exit %d, stderr %q", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("after the second -q the spool holds %q", names)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d messages in MAIL after flushing the same file twice, want 1", n)
	}
	// A temporary file left by a relay sendmail that died while writing
	// is removed once stale; one being written now is not.
	stale, fresh := filepath.Join(dir, tempPrefix+"1"), filepath.Join(dir, tempPrefix+"2")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * staleTemp)
	if err := os.Chtimes(stale, long, long); err != nil {
		t.Fatal(err)
	}
	if r := run(t, flush, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q with temporary files: exit %d, stderr %q", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); !reflect.DeepEqual(names, []string{filepath.Base(fresh)}) {
		t.Fatalf("spool holds %q, want only the fresh temporary file", names)
	}
	os.Remove(fresh)
	// An empty spool: nothing to do, and no NATS needed for it.
	if r := run(t, map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q, empty spool, NATS down: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSendmailSpoolFlushOrder: -q sends the oldest first, on one
// connection, and stops at a temporary failure leaving the rest.
func TestSendmailSpoolFlushOrder(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	var ids []string
	for i, rcpt := range []string{"a@contoso.com", "b@contoso.com", "c@contoso.com"} {
		m, path := spoolOne(t, dir, "Subject: x\n\nx\n", rcpt)
		// Spooled in this order: a, b, c (mtimes a minute apart).
		at := old.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	// NATS still down: 75, everything kept.
	if r := run(t, map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "--timeout", "5s", "-q"); r.code != 75 || !strings.Contains(r.stderr, "spool "+dir+" kept") {
		t.Fatalf("-q, NATS down: exit %d, stderr %q; want 75", r.code, r.stderr)
	}
	if n := len(spoolNames(t, dir)); n != 3 {
		t.Fatalf("spool holds %d files after a failed -q, want 3", n)
	}
	env, ctx := queuetest.StartMail(t)
	if r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q"); r.code != 0 {
		t.Fatalf("-q: exit %d, stderr %q", r.code, r.stderr)
	}
	for i, id := range ids {
		if _, q := queued(t, ctx, env.JS, uint64(i+1)); q.ID != id {
			t.Fatalf("MAIL seq %d is %s, want %s (oldest first)", i+1, q.ID, id)
		}
	}
}

// TestSendmailNoSpool: a spool directory that does not exist leaves
// relay sendmail as it was (75) and says how to make one, and so does one
// writable by all without the sticky bit (saying how to mend it); one
// that is a file is a usage error at once.
func TestSendmailNoSpool(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "relay365")
	vars := map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": missing}
	r := run(t, vars, "Subject: x\n\nx\n", "sendmail", "--timeout", "5s", "ops@contoso.com")
	if r.code != 75 || !strings.Contains(r.stderr, "is relay serve or relay sandbox running") ||
		!strings.Contains(r.stderr, "--spool") || !strings.Contains(r.stderr, "install -d -m 1733 "+missing) {
		t.Fatalf("exit %d, stderr %q; want 75, the NATS error and how to enable the spool", r.code, r.stderr)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("the spool was created: %v", err)
	}
	// Off: 75 without a word about the spool.
	vars["RELAY_SENDMAIL_SPOOL"] = "off"
	if r := run(t, vars, "Subject: x\n\nx\n", "sendmail", "--timeout", "5s", "ops@contoso.com"); r.code != 75 || strings.Contains(r.stderr, "spool") {
		t.Fatalf("spool off: exit %d, stderr %q", r.code, r.stderr)
	}
	// -q with no spool directory: nothing spooled, nothing to do.
	vars["RELAY_SENDMAIL_SPOOL"] = missing
	if r := run(t, vars, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q, no spool: exit %d, stderr %q", r.code, r.stderr)
	}

	// Writable by all without the sticky bit: anyone could remove what
	// it keeps, so nothing is kept there (75, saying how to mend it).
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	vars["RELAY_SENDMAIL_SPOOL"] = open
	if r := run(t, vars, "Subject: x\n\nx\n", "sendmail", "--timeout", "5s", "ops@contoso.com"); r.code != 75 || !strings.Contains(r.stderr, "chmod 1733 "+open) {
		t.Fatalf("spool 0777: exit %d, stderr %q; want 75 and how to mend it", r.code, r.stderr)
	}
	if n := len(spoolNames(t, open)); n != 0 {
		t.Fatalf("%d files kept in a spool anyone may empty", n)
	}
	vars["RELAY_SENDMAIL_SPOOL"] = missing

	file := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--spool", file, "ops@contoso.com"}, {"-q", "--spool", file}} {
		r := run(t, vars, "Subject: x\n\nx\n", append([]string{"sendmail"}, args...)...)
		if r.code != 64 || !strings.Contains(r.stderr, "--spool "+file+": not a directory") {
			t.Fatalf("%q: exit %d, stderr %q; want 64 naming --spool", args, r.code, r.stderr)
		}
	}
}

// TestSendmailSpoolFailed: spooled messages that can never be sent (not
// JSON; an account alias the relay refuses) are renamed .failed, each
// named on stderr with its account, the exit is 65, and the message
// between them is still queued.
func TestSendmailSpoolFailed(t *testing.T) {
	dir := t.TempDir()
	good, goodPath := spoolOne(t, dir, "Subject: x\n\nx\n", "ops@contoso.com")
	bad := &message.Message{ID: message.NewID(), Account: "Bad.Name", To: []string{"ops@contoso.com"}, Raw: []byte("Subject: x\r\n\r\nx\r\n")}
	if err := writeSpool(dir, bad); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.msg")
	if err := os.WriteFile(garbage, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Oldest first: garbage, good, bad.
	badPath := filepath.Join(dir, bad.ID+spoolSuffix)
	for i, p := range []string{garbage, goodPath, badPath} {
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	// Not a spooled message by name: left alone.
	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	env, ctx := queuetest.StartMail(t)
	r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q")
	if r.code != 65 {
		t.Fatalf("-q: exit %d, stderr %q; want 65", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 3 ||
		!strings.Contains(lines[0], garbage+` (account ""): not a spooled message`) || !strings.Contains(lines[0], "kept as garbage.msg.failed") ||
		!strings.Contains(lines[1], badPath+` (account "Bad.Name"): not queued`) || !strings.Contains(lines[1], "kept as "+bad.ID+".msg.failed") ||
		!strings.Contains(lines[2], "2 message(s) could not be sent") {
		t.Fatalf("stderr:\n%s", r.stderr)
	}
	want := []string{bad.ID + ".msg.failed", "garbage.msg.failed", "notes.txt"}
	if names := spoolNames(t, dir); !reflect.DeepEqual(names, want) {
		t.Fatalf("spool holds %q, want %q", names, want)
	}
	if n := mailCount(t, ctx, env.JS); n != 1 {
		t.Fatalf("%d messages in MAIL, want 1", n)
	}
	if _, q := queued(t, ctx, env.JS, 1); q.ID != good.ID {
		t.Fatalf("queued %s, want %s", q.ID, good.ID)
	}
	// .failed files are not tried again.
	if r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q again: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSendmailSpoolRefused: a spooled message for an account the
// flusher's credentials may not publish to is refused by NATS: .failed,
// exit 77, at once rather than at --timeout.
func TestSendmailSpoolRefused(t *testing.T) {
	dir := t.TempDir()
	spoolOne(t, dir, "Subject: x\n\nx\n", "ops@contoso.com") // account alerts
	ns := startPlainNATS(t, &server.Options{Users: []*server.User{
		{Username: "cron", Password: "cron-password-1", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{"mail.send.billing"}},
		}},
	}})
	start := time.Now()
	r := run(t, map[string]string{"RELAY_NATS_URL": ns.ClientURL(), "RELAY_NATS_USER": "cron", "RELAY_NATS_PASSWORD": "cron-password-1", "RELAY_SENDMAIL_SPOOL": dir},
		"", "sendmail", "--timeout", "90s", "-q")
	if r.code != 77 || !strings.Contains(strings.ToLower(r.stderr), "permissions violation") || !strings.Contains(r.stderr, `(account "alerts")`) {
		t.Fatalf("exit %d, stderr %q; want 77", r.code, r.stderr)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v: waited for the timeout", d)
	}
	if names := spoolNames(t, dir); len(names) != 1 || !strings.HasSuffix(names[0], ".msg.failed") {
		t.Fatalf("spool holds %q, want one .failed file", names)
	}
}

// TestSendmailDrainsSpool: a message queued as usual takes what the
// spool holds with it, so a host whose mail is all root's drains by itself.
func TestSendmailDrainsSpool(t *testing.T) {
	dir := t.TempDir()
	spooled, _ := spoolOne(t, dir, "Subject: first\n\nwhile NATS was down\n", "ops@contoso.com")
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": dir}
	if r := run(t, vars, "Subject: second\n\nx\n", "sendmail", "ops@contoso.com"); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("spool holds %q after a send", names)
	}
	if n := mailCount(t, ctx, env.JS); n != 2 {
		t.Fatalf("%d messages in MAIL, want 2", n)
	}
	if sm, q := queued(t, ctx, env.JS, 2); q.ID != spooled.ID || sm.Header.Get(jetstream.MsgIDHeader) != spooled.ID {
		t.Fatalf("MAIL seq 2 is %s, want the spooled %s", q.ID, spooled.ID)
	}
}

// TestSendmailSpoolUnwritable: a spool this user may not write to keeps
// nothing, and the answer stays 75 with both reasons.
func TestSendmailSpoolUnwritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes into a directory of mode 0500")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	vars := map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": dir}
	r := run(t, vars, "Subject: x\n\nx\n", "sendmail", "--timeout", "5s", "ops@contoso.com")
	if r.code != 75 || !strings.Contains(r.stderr, "is relay serve or relay sandbox running") ||
		!strings.Contains(r.stderr, "not kept in the spool") || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("exit %d, stderr %q; want 75 and both reasons", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("spool holds %q", names)
	}
}

// TestSendmailSpoolSkipsUnreadable: a file this user may not read
// (another user's, mode 0600, in a shared spool) is left to its owner or
// root without a word; the rest is flushed.
func TestSendmailSpoolSkipsUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads a file of mode 0000")
	}
	dir := t.TempDir()
	good, _ := spoolOne(t, dir, "Subject: x\n\nx\n", "ops@contoso.com")
	theirs := filepath.Join(dir, message.NewID()+spoolSuffix)
	if err := os.WriteFile(theirs, []byte("{}"), 0o000); err != nil {
		t.Fatal(err)
	}
	env, ctx := queuetest.StartMail(t)
	if r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q: exit %d, stderr %q", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); !reflect.DeepEqual(names, []string{filepath.Base(theirs)}) {
		t.Fatalf("spool holds %q, want only the unreadable file", names)
	}
	if _, q := queued(t, ctx, env.JS, 1); q.ID != good.ID {
		t.Fatalf("queued %s, want %s", q.ID, good.ID)
	}
}

// TestSendmailInterruptedNotSpooled: a relay sendmail interrupted
// (SIGINT, SIGTERM: Main's context ends) before its message is queued
// does not keep it in the spool and claim success. Ctrl-C means "do not
// send"; and a caller killed by timeout(1) that sends again would have
// the spooled copy sent as well, under another id.
func TestSendmailInterruptedNotSpooled(t *testing.T) {
	env, _ := queuetest.StartMail(t)
	for _, url := range []string{env.URL, natsDown} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the signal came while the message was being read
		var out, errb bytes.Buffer
		vars := map[string]string{"RELAY_NATS_URL": url, "RELAY_ACCOUNT": "alerts", "RELAY_SENDMAIL_SPOOL": dir}
		code := Run(ctx, []string{"sendmail", "--timeout", "5s", "ops@contoso.com"}, Env{
			Stdin: strings.NewReader("Subject: x\n\nx\n"), Stdout: &out, Stderr: &errb,
			Getenv: func(k string) string { return vars[k] },
		})
		if code != 75 || !strings.Contains(errb.String(), "interrupted") {
			t.Fatalf("NATS %s, interrupted: exit %d, stderr %q; want 75 saying it was interrupted", url, code, errb.String())
		}
		if names := spoolNames(t, dir); len(names) != 0 {
			t.Fatalf("NATS %s, interrupted: the spool holds %q", url, names)
		}
	}
}

// TestSendmailSpoolHostileName: a file any user may plant in the spool,
// named with a terminal control sequence and a newline, is named on
// -q's stderr (root's terminal, or cron's mail) with those escaped:
// it can neither drive the terminal nor forge a line of the report.
func TestSendmailSpoolHostileName(t *testing.T) {
	dir := t.TempDir()
	name := "x\x1b]0;owned\x07\nrelay sendmail: all sent.msg"
	if err := os.WriteFile(filepath.Join(dir, name), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	env, _ := queuetest.StartMail(t)
	r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 65 || strings.ContainsAny(r.stderr, "\x1b\x07") || len(lines) != 2 ||
		!strings.Contains(lines[0], `x\x1b]0;owned\a\nrelay sendmail: all sent.msg`) {
		t.Fatalf("exit %d, stderr %q; want 65 and two lines, the name escaped", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 1 || names[0] != name+failedSuffix {
		t.Fatalf("spool holds %q", names)
	}
}

// TestSendmailQueueSpoolUnusable: -q whose spool exists but cannot be
// looked at (a symbolic link loop here; a parent this user may not
// search, a stale network mount) fails, naming the spool, rather than
// exit 0 as if the spool were sent; only a spool that does not exist
// holds nothing.
func TestSendmailQueueSpoolUnusable(t *testing.T) {
	loop := filepath.Join(t.TempDir(), "relay365")
	if err := os.Symlink(filepath.Base(loop), loop); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"RELAY_NATS_URL": natsDown, "RELAY_SENDMAIL_SPOOL": loop}
	if r := run(t, vars, "", "sendmail", "-q"); r.code != 70 || !strings.Contains(r.stderr, loop) {
		t.Fatalf("-q, spool a symlink loop: exit %d, stderr %q; want 70 naming the spool", r.code, r.stderr)
	}
	if os.Geteuid() == 0 {
		return // root searches a directory of mode 0000
	}
	parent := t.TempDir()
	spool := filepath.Join(parent, "relay365")
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(parent, 0o700) })
	vars["RELAY_SENDMAIL_SPOOL"] = spool
	if r := run(t, vars, "", "sendmail", "-q"); r.code != 77 || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("-q, spool in a parent this user may not search: exit %d, stderr %q; want 77", r.code, r.stderr)
	}
}

// TestSendmailSpoolLarge: a message over message.InlineMax is spooled
// whole and flushed through the body store: MAIL gets a reference,
// the body store the message as it was read.
func TestSendmailSpoolLarge(t *testing.T) {
	dir := t.TempDir()
	text := strings.Repeat("smartd: sector reallocated, see the attached log line\n", 8000) // ~430 KB
	m, _ := spoolOne(t, dir, "Subject: disk\n\n"+text, "ops@contoso.com")
	if len(m.Raw) <= message.InlineMax {
		t.Fatalf("spooled %d bytes, want more than %d", len(m.Raw), message.InlineMax)
	}
	env, ctx := queuetest.StartMail(t)
	if r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q: exit %d, stderr %q", r.code, r.stderr)
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("after -q the spool holds %q", names)
	}
	sm, q := queued(t, ctx, env.JS, 1)
	if q.ID != m.ID || q.Body == nil || len(sm.Data) > 1024 {
		t.Fatalf("queued %d bytes, %+v: want a reference for %s", len(sm.Data), q, m.ID)
	}
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := store.Open(ctx, *q.Body)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	stored, err := io.ReadAll(rc)
	if err != nil || !bytes.Contains(stored, []byte(strings.ReplaceAll(text, "\n", "\r\n"))) {
		t.Fatalf("the stored body (%d bytes, %v) lacks the text", len(stored), err)
	}
}

// TestSendmailSpoolTwoFlushers: two -q at once (cron's, and one by
// hand) each try every file; the ids make the second copy a duplicate,
// so MAIL gets each message once, both succeed and the spool ends empty.
func TestSendmailSpoolTwoFlushers(t *testing.T) {
	dir := t.TempDir()
	const n = 30
	for i := range n {
		spoolOne(t, dir, "Subject: x\n\nx\n", fmt.Sprintf("ops%d@contoso.com", i))
	}
	env, ctx := queuetest.StartMail(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}
	results := make(chan result, 2)
	for range 2 {
		go func() { results <- run(t, vars, "", "sendmail", "-q") }()
	}
	for range 2 {
		if r := <-results; r.code != 0 || r.stderr != "" {
			t.Fatalf("-q: exit %d, stderr %q", r.code, r.stderr)
		}
	}
	if names := spoolNames(t, dir); len(names) != 0 {
		t.Fatalf("after two -q the spool holds %q", names)
	}
	if got := mailCount(t, ctx, env.JS); got != n {
		t.Fatalf("%d messages in MAIL, want %d", got, n)
	}
}
