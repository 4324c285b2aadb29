//go:build !unix

package daemon

// lockDataDir: no flock here; a second relay serve on the same data
// directory is refused only by its ports being taken.
func lockDataDir(string) (release func(), warn, err error) { return func() {}, nil, nil }
