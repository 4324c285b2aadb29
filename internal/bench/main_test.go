package bench_test

import (
	"os"
	"testing"

	"relay365/internal/bench"
	"relay365/internal/relaycmd"
)

// TestMain lets the bench's tests re-execute the test binary as the
// bench's children: with bench.ChildEnv set it is the relay command line
// (relay serve, relay bench-child …), as the relay binary would be.
func TestMain(m *testing.M) {
	if os.Getenv(bench.ChildEnv) != "" {
		os.Exit(relaycmd.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}
