//go:build unix

package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes <dir>/serve.lock, an exclusive flock held for the life
// of the process's embedded server: nats-server takes no lock on its
// JetStream store, and two servers on one store each recover and rewrite
// the other's files. The kernel drops the lock when the process ends,
// however it ends (a SIGKILL leaves no stale lock). The file holds the
// holder's pid, for the refusal's message. A file system that does not
// lock (some network file systems answer ENOLCK or ENOTSUP) is not a
// reason to refuse a start that worked before: warn says so, and the
// relay runs unlocked.
func lockDataDir(dir string) (release func(), warn, err error) {
	path := filepath.Join(dir, "serve.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--data-dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("--data-dir %s is in use by another relay serve%s with its embedded NATS server: stop it first, or give this one another --data-dir (%s is locked)", dir, holder, path)
		}
		return func() {}, fmt.Errorf("--data-dir %s: cannot lock %s (%w): nothing stops a second relay serve from opening this store too", dir, path, err), nil
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil, nil
}
