//go:build unix

package relaycmd

import "syscall"

// openNoFollow opens a spool file without following a symbolic link and
// without blocking on a FIFO (spool.go's readSpool).
const openNoFollow = syscall.O_NOFOLLOW | syscall.O_NONBLOCK
