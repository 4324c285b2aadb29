//go:build crashpoints

package crashpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// armed is the point RELAY_CRASHPOINT names, read once at start.
var armed = func() *point {
	p, err := parse(os.Getenv(Env))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Env, err)
		os.Exit(2)
	}
	return p
}()

// point is an armed crash point: the process dies at its at-th hit.
type point struct {
	name string
	at   int64
	hits atomic.Int64
}

// parse reads "NAME" or "NAME:N" (N ≥ 1); empty arms nothing.
func parse(s string) (*point, error) {
	if s == "" {
		return nil, nil
	}
	name, n, hasN := strings.Cut(s, ":")
	at := int64(1)
	if hasN {
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q: want NAME or NAME:N with N a hit count from 1", s)
		}
		at = v
	}
	if name != IngressBodyStored && name != WorkerAcked && name != TokenAnswered {
		return nil, fmt.Errorf("%q: unknown crash point %q (want %s, %s or %s)", s, name, IngressBodyStored, WorkerAcked, TokenAnswered)
	}
	return &point{name: name, at: at}, nil
}

// Hit kills the process with SIGKILL when name is the armed point and
// this is its N-th hit. It does not return then: the signal is delivered
// asynchronously, and nothing may run past the point meanwhile.
func Hit(name string) {
	if armed == nil || name != armed.name || armed.hits.Add(1) != armed.at {
		return
	}
	self, err := os.FindProcess(os.Getpid())
	if err == nil {
		err = self.Kill() // SIGKILL on Unix
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "crash point %s: %v\n", name, err)
		os.Exit(137)
	}
	select {}
}
