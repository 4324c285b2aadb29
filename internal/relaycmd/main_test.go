package relaycmd

import (
	"os"
	"testing"

	"relay365/internal/bench"
)

// TestMain lets relay bench, run by the tests, re-execute the test binary
// as its children (relay serve, relay bench-child …): with bench.ChildEnv
// set the binary is the relay command line, as the relay binary is.
func TestMain(m *testing.M) {
	if os.Getenv(bench.ChildEnv) != "" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}
