//go:build unix

package token

import (
	"io/fs"
	"syscall"
	"testing"
	"time"
)

type fakeInfo struct {
	mode fs.FileMode
	uid  uint32
}

func (f fakeInfo) Name() string       { return "token.key" }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return false }
func (f fakeInfo) Sys() any           { return &syscall.Stat_t{Uid: f.uid} }

// A key file readable by its group passes only as a mounted secret:
// root's, group read only, nothing for others, and the reader not root.
func TestMountedSecret(t *testing.T) {
	for _, c := range []struct {
		mode fs.FileMode
		uid  uint32
		want bool
	}{
		{0o440, 0, true},     // Kubernetes secret volume with fsGroup
		{0o640, 0, true},     // the same, root may write
		{0o444, 0, false},    // readable by others
		{0o460, 0, false},    // group-writable
		{0o440, 1000, false}, // not root's: chmod 600 it
	} {
		if got := mountedSecretFor(fakeInfo{c.mode, c.uid}, 65532); got != c.want {
			t.Errorf("mode %04o uid %d: %v, want %v", c.mode, c.uid, got, c.want)
		}
	}
	if mountedSecretFor(fakeInfo{0o440, 0}, 0) {
		t.Error("a group-readable key passes for root")
	}
}
