//go:build !unix

package relaycmd

// openNoFollow: no such flags here; readSpool still reads regular files
// only.
const openNoFollow = 0
