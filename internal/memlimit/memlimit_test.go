package memlimit

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

func TestParseAndValidate(t *testing.T) {
	tests := []struct {
		in      string
		want    Limit
		bad     string // error of Parse, or else of Validate; "" for none
		printed string
	}{
		{in: "64MiB", want: 64 << 20, printed: "64MiB"},
		{in: "1GiB", want: 1 << 30, printed: "1GiB"},
		{in: "2TiB", want: 2 << 40, printed: "2TiB"},
		{in: "49152KiB", want: 48 << 20, printed: "48MiB"},
		{in: "100000000", want: 100000000, printed: "100000000B"},
		{in: "100000000B", want: 100000000, printed: "100000000B"},
		{in: "off", want: Off, printed: "off"},
		{in: "32MiB", want: Min, printed: "32MiB"},
		{in: "31MiB", want: 31 << 20, bad: "--memory-limit 31MiB: want at least 32MiB"},
		{in: "0", want: 0, bad: "--memory-limit 0B: want at least 32MiB"},
		{in: "", bad: `--memory-limit "": want a size`},
		{in: "64MB", bad: `--memory-limit "64MB": want a size such as 64MiB`},
		{in: "1.5GiB", bad: `"1.5GiB"`},
		{in: "-64MiB", bad: `"-64MiB"`},
		{in: "MiB", bad: `"MiB"`},
		{in: "9999999TiB", bad: `"9999999TiB"`}, // overflows int64
		{in: "OFF", bad: `"OFF"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var l Limit
			err := l.Set(tc.in)
			if err == nil {
				if l != tc.want {
					t.Fatalf("Parse(%q) = %d, want %d", tc.in, l, tc.want)
				}
				err = l.Validate()
			}
			switch {
			case tc.bad == "" && err != nil:
				t.Fatalf("%q: %v", tc.in, err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Fatalf("%q: error %v, want one with %q", tc.in, err, tc.bad)
			}
			if tc.printed != "" && l.String() != tc.printed {
				t.Fatalf("%q prints as %q, want %q", tc.in, l.String(), tc.printed)
			}
		})
	}
}

// TestApply: the limit is the process's afterwards (read back with
// debug.SetMemoryLimit(-1)), and "off" lifts it.
func TestApply(t *testing.T) {
	t.Setenv(EnvVar, "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	for _, l := range []Limit{Default, 200 << 20, Off} {
		eff, from := Apply(l)
		if got := debug.SetMemoryLimit(-1); got != int64(l) || eff != l || from != "--memory-limit" {
			t.Fatalf("Apply(%s): runtime limit %d, reported %s from %s", l, got, eff, from)
		}
	}
	if Default < Min || Default == Off {
		t.Fatalf("Default %s is not a valid limit", Default)
	}
}

// TestGOMEMLIMITWins: with GOMEMLIMIT set the runtime's limit (which it
// took from the variable at start) is left alone.
func TestGOMEMLIMITWins(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	t.Setenv(EnvVar, "300MiB")
	debug.SetMemoryLimit(300 << 20) // what the runtime did at start
	eff, from := Apply(Default)
	if got := debug.SetMemoryLimit(-1); got != 300<<20 || eff != 300<<20 || from != EnvVar {
		t.Fatalf("runtime limit %d, reported %s from %s; want GOMEMLIMIT's 300MiB", got, eff, from)
	}
	if math.MaxInt64 != int64(Off) {
		t.Fatal("Off is not the runtime's no-limit value")
	}
}
