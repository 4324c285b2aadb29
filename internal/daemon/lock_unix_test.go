//go:build unix

package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDataDirLockFollowsNoSymlink: serve.lock is opened for writing,
// truncated and given the relay's pid. A serve.lock planted in the data
// directory as a symbolic link (by whoever may write there: the relay's
// own user when the relay runs as root, any user for a data directory
// under /tmp) made the relay truncate and overwrite the file it points
// to, any file the relay's user may write. The relay must refuse to
// start and leave that file alone.
func TestDataDirLockFollowsNoSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "precious.conf")
	const content = "important configuration\n"
	if err := os.WriteFile(victim, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "serve.lock")); err != nil {
		t.Fatal(err)
	}
	release, _, err := lockDataDir(dir)
	if err == nil {
		release()
	}
	got, rerr := os.ReadFile(victim)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if string(got) != content {
		t.Fatalf("the file serve.lock links to was rewritten: %q, was %q", got, content)
	}
	if err == nil {
		t.Fatal("a serve.lock that is a symbolic link was taken as the lock")
	}
}
