package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

// fromBuildInfo takes the version, revision, time and modified flag from
// the settings the Go toolchain stamps, and says unknown for what is
// missing.
func TestFromBuildInfo(t *testing.T) {
	got := fromBuildInfo(&debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "relay365", Version: "v1.4.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef"},
			{Key: "vcs.time", Value: "2026-12-05T17:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	})
	want := Info{Version: "v1.4.0", Revision: "0123456789abcdef", Time: "2026-12-05T17:00:00Z", Modified: true, GoVersion: "go1.26.8"}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if s := got.String(); s != "v1.4.0 (commit 0123456789abcdef (modified), built 2026-12-05T17:00:00Z, go1.26.8)" {
		t.Errorf("String() = %q", s)
	}
	bare := fromBuildInfo(&debug.BuildInfo{})
	if bare.Version != Unknown || bare.Revision != Unknown || bare.Time != Unknown || bare.GoVersion != Unknown {
		t.Errorf("empty build info: %+v, want unknown everywhere", bare)
	}
}

// Read works in a test binary: the Go version is the toolchain's.
func TestRead(t *testing.T) {
	if i := Read(); !strings.HasPrefix(i.GoVersion, "go") {
		t.Errorf("Read() = %+v", i)
	}
}
