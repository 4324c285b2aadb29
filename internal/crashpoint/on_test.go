//go:build crashpoints

package crashpoint

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		at   int64
		err  string
	}{
		{"", "", 0, ""},
		{IngressBodyStored, IngressBodyStored, 1, ""},
		{WorkerAcked + ":3", WorkerAcked, 3, ""},
		{TokenAnswered, TokenAnswered, 1, ""},
		{WorkerAcked + ":0", "", 0, "hit count from 1"},
		{WorkerAcked + ":x", "", 0, "hit count from 1"},
		{"nowhere", "", 0, `unknown crash point "nowhere"`},
	} {
		p, err := parse(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parse(%q): %v, want an error with %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("parse(%q): %v", tc.in, err)
		case tc.name == "" && p != nil:
			t.Errorf("parse(%q) armed %q", tc.in, p.name)
		case tc.name != "" && (p == nil || p.name != tc.name || p.at != tc.at):
			t.Errorf("parse(%q) = %+v, want %s at hit %d", tc.in, p, tc.name, tc.at)
		}
	}
}

// TestHitKillsAtTheNthHit runs this test binary again as a child armed
// at WorkerAcked:2: it must die by SIGKILL at the second hit, having
// passed the first (one line on stdout) and not the second.
func TestHitKillsAtTheNthHit(t *testing.T) {
	if os.Getenv("CRASHPOINT_CHILD") == "1" {
		for i := range 3 {
			Hit(IngressBodyStored) // not armed: passes
			Hit(WorkerAcked)
			os.Stdout.WriteString("passed " + string(rune('1'+i)) + "\n")
		}
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestHitKillsAtTheNthHit$")
	cmd.Env = append(os.Environ(), "CRASHPOINT_CHILD=1", Env+"="+WorkerAcked+":2")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v, want killed by SIGKILL; stdout %q", err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL; stdout %q", err, out)
	}
	if string(out) != "passed 1\n" {
		t.Errorf("child's stdout %q, want exactly the first hit passed", out)
	}
}
