//go:build unix

package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// signalChildEnv makes the test binary run signalChild instead of the
// tests: a command that, like relay serve in its shutdown grace, keeps
// working after the first signal.
const signalChildEnv = "RELAY_CLI_SIGNAL_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(signalChildEnv) != "" {
		signalChild()
		return
	}
	os.Exit(m.Run())
}

func signalChild() {
	ctx, stop := SignalContext()
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("stopping")
	select {} // a shutdown grace that never ends: only a second signal may end the process
}

// TestSecondSignalQuits: the first SIGINT ends the context and the
// command goes on with its shutdown; the second ends the process, as
// SIGINT's default action does. With signal.NotifyContext alone the
// second was swallowed and the child ran until the test's deadline.
func TestSecondSignalQuits(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), signalChildEnv+"=1")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(out)
			expect := func(want string) {
				t.Helper()
				if !lines.Scan() || lines.Text() != want {
					t.Fatalf("child said %q (%v), want %q", lines.Text(), lines.Err(), want)
				}
			}
			expect("ready")
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			expect("stopping") // the first signal was the command's: it did not die of it
			// The handler is removed by a goroutine after the context
			// ends; a signal sent before that is still caught, so send
			// again until the process ends (or the deadline passes).
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.After(30 * time.Second)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
					t.Fatal(err)
				}
				select {
				case err := <-done:
					var exit *exec.ExitError
					if !errors.As(err, &exit) {
						t.Fatalf("child ended with %v, want killed by %v", err, sig)
					}
					ws, ok := exit.Sys().(syscall.WaitStatus)
					if !ok || !ws.Signaled() || ws.Signal() != sig {
						t.Fatalf("child ended with %v, want killed by %v", err, sig)
					}
					return
				case <-deadline:
					_ = cmd.Process.Kill()
					t.Fatalf("the child still ran 30 s after repeated %v: the second signal was swallowed", sig)
				case <-tick.C:
				}
			}
		})
	}
}
