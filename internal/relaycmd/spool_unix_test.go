//go:build unix

package relaycmd

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"relay365/internal/message"
	"relay365/internal/queue/queuetest"
)

// TestSendmailSpoolPlantedLinks: what a hostile user may plant in the
// world-writable spool for root's -q to open. A hard link (a name for a
// file its planter may not read, where the kernel lets users link such
// files: BSD, macOS, Linux without fs.protected_hardlinks) is not read
// nor sent, but renamed .failed, only the name, and reported; a
// symbolic link, a FIFO and a directory named *.msg are left alone,
// -q neither following, blocking on nor failing over them. The target
// of each is a valid spooled message; none is queued, and the targets
// are untouched.
func TestSendmailSpoolPlantedLinks(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	secret := &message.Message{ID: message.NewID(), Account: "alerts", To: []string{"ops@contoso.com"}, Raw: []byte("Subject: secret\r\n\r\nx\r\n")}
	if err := writeSpool(elsewhere, secret); err != nil { // mode 0600: its owner's
		t.Fatal(err)
	}
	target := filepath.Join(elsewhere, secret.ID+spoolSuffix)
	before, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(target, filepath.Join(dir, "hard.msg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "sym.msg")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.msg"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.msg"), 0o700); err != nil {
		t.Fatal(err)
	}
	env, ctx := queuetest.StartMail(t)
	r := run(t, map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_SENDMAIL_SPOOL": dir}, "", "sendmail", "-q")
	if r.code != 65 || !strings.Contains(r.stderr, "hard.msg") || !strings.Contains(r.stderr, "2 links") {
		t.Fatalf("-q: exit %d, stderr %q; want 65 naming the hard link", r.code, r.stderr)
	}
	if n := mailCount(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d messages queued from planted links, want 0", n)
	}
	want := []string{"dir.msg", "fifo.msg", "hard.msg.failed", "sym.msg"}
	if names := spoolNames(t, dir); !reflect.DeepEqual(names, want) {
		t.Fatalf("spool holds %q, want %q", names, want)
	}
	if after, err := os.ReadFile(target); err != nil || string(after) != string(before) {
		t.Fatalf("the links' target changed: %v", err)
	}
}
