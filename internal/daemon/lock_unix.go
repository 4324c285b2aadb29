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
	// Not through a symbolic link, nor onto anything but a regular
	// file: the file is truncated and written below, and a link planted
	// in the data directory would have the relay rewrite the file it
	// names. O_NONBLOCK: a FIFO planted there must not hang the start.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--data-dir %s: %s must be a regular file the relay creates: %w", dir, path, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("--data-dir %s: %s is not a regular file: remove it", dir, path)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		// From the file locked, not by its name again, and a pid's worth.
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b[:n]))); perr == nil {
			holder = fmt.Sprintf(" (pid %d)", pid)
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
