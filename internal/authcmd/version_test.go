package authcmd

import (
	"bytes"
	"context"
	"testing"

	"relay365/internal/buildinfo"
	"relay365/internal/cli"
)

// authtool --version (and version) prints the build the way relay version
// does, from the same build information.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "version"} {
		var out bytes.Buffer
		code := Run(context.Background(), []string{arg}, Env{Env: cli.Env{Stdout: &out, Stderr: &out}})
		if want := "authtool " + buildinfo.Read().String() + "\n"; code != 0 || out.String() != want {
			t.Errorf("authtool %s: exit %d, %q; want %q", arg, code, out.String(), want)
		}
	}
}
