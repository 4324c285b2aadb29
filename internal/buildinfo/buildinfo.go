// Package buildinfo says which build of Relay365 runs: the module
// version, VCS revision and commit time that the Go toolchain stamps into
// the binary (runtime/debug.ReadBuildInfo), and the Go version. `relay
// version`, `authtool --version` and the relay_build_info metric all read
// it here, so they agree.
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// Unknown stands for a field the binary does not carry (a build outside a
// VCS checkout, or with -buildvcs=false).
const Unknown = "unknown"

// Info is one binary's build.
type Info struct {
	Version   string // module version: a tag, a pseudo-version, or (devel)
	Revision  string // VCS commit
	Time      string // commit time, RFC 3339
	Modified  bool   // built from a work tree with uncommitted changes
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: Unknown, Revision: Unknown, Time: Unknown, GoVersion: Unknown}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	i := Info{Version: bi.Main.Version, Revision: Unknown, Time: Unknown, GoVersion: bi.GoVersion}
	if i.Version == "" {
		i.Version = Unknown
	}
	if i.GoVersion == "" {
		i.GoVersion = Unknown
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is the line `relay version` prints after the program name:
// "v1.2.0 (commit 1a2b3c4…, built 2026-12-05T17:00:00Z, go1.26.8)".
func (i Info) String() string {
	rev := i.Revision
	if i.Modified {
		rev += " (modified)"
	}
	return fmt.Sprintf("%s (commit %s, built %s, %s)", i.Version, rev, i.Time, i.GoVersion)
}
