// Package memlimit gives the relay's long-running processes (`relay
// serve`, `relay sandbox`, `relay bench`) a soft memory limit when the
// operator did not set one with GOMEMLIMIT.
//
// # Why
//
// Without a limit the Go collector lets the heap grow to twice the live
// data (GOGC=100) before it collects, and the pages freed stay resident
// until the scavenger returns them. `relay bench` measured a live heap of
// 20–30 MB (mostly the embedded nats-server's file store block buffers, a
// few MB per active stream, and the messages in flight) but a heap of up
// to 60 MB and a resident set of 90–137 MB over a run (BENCHMARKS.md). A
// soft limit (runtime/debug.SetMemoryLimit) makes the collector run sooner
// and return freed memory to the OS as the process approaches it, so the
// resident set follows the live data instead of twice it.
//
// # Failure semantics
//
// The limit is soft: the collector works harder near it but never fails
// an allocation. If the live data grows past the limit (far more accounts
// or much larger messages than the default was measured with), the
// runtime caps the collector at about half the CPU instead of thrashing,
// and memory grows beyond the limit as needed; operators of such
// processes raise --memory-limit or set GOMEMLIMIT. A limit below Min is
// refused at start (it would make the collector run constantly), as is
// anything that does not parse.
//
// The limit from the flag is a floor, not a ceiling the collector must
// fight: Follow raises the soft limit to half above the live heap
// whenever that is more (follow.go, Above, says why: a limit under the
// live heap made an idle relay of 2,000 mailboxes collect on a whole
// core), and lowers it back to the floor as the heap shrinks.
//
// GOMEMLIMIT wins when it is set: the Go runtime has applied it at start,
// and Apply and Follow leave it alone.
package memlimit

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Default is the limit used when neither --memory-limit nor GOMEMLIMIT is
// given, chosen from `relay bench` measurements (BENCHMARKS.md): with it
// the bench's peak resident set stays under 100 MB and the CPU per 1,000
// messages does not rise measurably.
const Default Limit = 64 << 20

// Min is the smallest limit accepted: below it the collector would run
// almost constantly for a relay's live heap (about 20–30 MB under load).
const Min Limit = 32 << 20

// Off is the "off" value: no limit (the runtime's own representation).
const Off Limit = math.MaxInt64

// EnvVar is the Go runtime's variable, which wins over the flag.
const EnvVar = "GOMEMLIMIT"

// Limit is a soft memory limit in bytes. As a flag it takes GOMEMLIMIT's
// syntax: a number of bytes with an optional unit B, KiB, MiB, GiB or
// TiB, or "off".
type Limit int64

var units = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

// Parse reads a limit in GOMEMLIMIT's syntax ("64MiB", "100000000",
// "off"). It does not check Min: Validate does.
func Parse(s string) (Limit, error) {
	if s == "off" {
		return Off, nil
	}
	num, shift := s, uint(0)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, shift = strings.TrimSuffix(s, u.suffix), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("--memory-limit %q: want a size such as 64MiB or 1GiB (units B, KiB, MiB, GiB, TiB, as GOMEMLIMIT), or off", s)
	}
	return Limit(n << shift), nil
}

// Set implements flag.Value.
func (l *Limit) Set(s string) error {
	v, err := Parse(s)
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// String implements flag.Value: the largest unit that divides the value.
func (l Limit) String() string {
	if l == Off {
		return "off"
	}
	for _, u := range units {
		if u.shift > 0 && l != 0 && int64(l)%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(l)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(l), 10) + "B"
}

// Validate says what to fix in a limit given on the command line.
func (l Limit) Validate() error {
	if l < Min {
		return fmt.Errorf("--memory-limit %s: want at least %s (below that the collector runs almost constantly), or off", l, Min)
	}
	return nil
}

// Apply sets the process's soft memory limit to l unless GOMEMLIMIT is
// set, which the runtime has applied already and which wins. It returns
// the limit in effect (math.MaxInt64: none) and where it came from:
// EnvVar or "--memory-limit".
func Apply(l Limit) (effective Limit, source string) {
	if v, ok := os.LookupEnv(EnvVar); ok && v != "" {
		return Limit(debug.SetMemoryLimit(-1)), EnvVar
	}
	debug.SetMemoryLimit(int64(l))
	return Limit(debug.SetMemoryLimit(-1)), "--memory-limit"
}
