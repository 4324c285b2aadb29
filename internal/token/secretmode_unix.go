//go:build unix

package token

import (
	"io/fs"
	"syscall"
)

// mountedSecret reports whether a key file readable by its group is a
// secret mounted for this process the way Kubernetes does it: owned by
// root, group-readable for the pod's fsGroup (a secret volume with
// fsGroup is mode 0440 root:<fsGroup>), writable by nobody but root and
// closed to others. A file of the relay's own user must still be 0600.
func mountedSecret(fi fs.FileInfo) bool { return mountedSecretFor(fi, syscall.Getuid()) }

func mountedSecretFor(fi fs.FileInfo, uid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := fi.Mode().Perm()
	return st.Uid == 0 && perm&0o037 == 0 && perm&0o040 != 0 && uid != 0
}
