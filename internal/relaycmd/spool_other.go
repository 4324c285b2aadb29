//go:build !unix

package relaycmd

import "io/fs"

// openNoFollow: no such flags here; readSpool still reads regular files
// only.
const openNoFollow = 0

// linkCount: not known here; taken as one name.
func linkCount(fs.FileInfo) uint64 { return 1 }
