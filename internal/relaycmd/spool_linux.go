package relaycmd

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the file system that holds f, the names in its
// directories included (syncfs(2)): how writeSpool makes a spooled
// message's name durable when the spool directory may not be opened.
func syncFS(f *os.File) error { return unix.Syncfs(int(f.Fd())) }
