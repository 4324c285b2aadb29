//go:build !linux

package relaycmd

import (
	"errors"
	"os"
)

// syncFS: no syncfs(2) here; writeSpool then reports that the spool
// directory could not be opened.
func syncFS(*os.File) error { return errors.ErrUnsupported }
