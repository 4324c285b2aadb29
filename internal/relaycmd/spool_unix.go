//go:build unix

package relaycmd

import (
	"io/fs"
	"syscall"
)

// openNoFollow opens a spool file without following a symbolic link and
// without blocking on a FIFO (spool.go's readSpool).
const openNoFollow = syscall.O_NOFOLLOW | syscall.O_NONBLOCK

// linkCount is the number of names (hard links) of the file fi describes.
func linkCount(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
