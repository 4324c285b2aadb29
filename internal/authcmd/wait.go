package authcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"time"

	"relay365/internal/logging"
)

// openBrowser opens u with env.OpenBrowser or the system's opener.
func openBrowser(env Env, u string) error {
	if env.OpenBrowser != nil {
		return env.OpenBrowser(u)
	}
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no graphical session")
		}
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }() // reap the opener; the browser lives on without it
	return nil
}

// waiting is the countdown shown once the person knows what to do.
type waiting struct{ stop func() }

func (wt *waiting) start(ctx context.Context, w io.Writer, what string, deadline time.Time) {
	wt.stop = countdown(ctx, w, what, deadline)
}

// done stops the countdown, if it started.
func (wt *waiting) done() {
	if wt.stop != nil {
		wt.stop()
	}
}

// countdown shows on w how long the wait for what may still last (until
// deadline), until the returned stop is called or ctx ends: a line
// rewritten every second on a terminal, a line every 30 seconds otherwise
// (logs, pipes). stop waits for the last write.
func countdown(ctx context.Context, w io.Writer, what string, deadline time.Time) (stop func()) {
	if deadline.IsZero() {
		return func() {}
	}
	tty := logging.IsTerminal(unwrapWriter(w))
	every := 30 * time.Second
	if tty {
		every = time.Second
	}
	left := func() time.Duration { return time.Until(deadline).Round(time.Second) }
	fmt.Fprintf(w, "Waiting for %s: %s left (Ctrl-C cancels; nothing is stored until a test mail goes through).\n", what, left())
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r  waiting for %s: %s left ", what, left())
				} else {
					fmt.Fprintf(w, "  waiting for %s: %s left\n", what, left())
				}
				continue
			case <-done:
			case <-ctx.Done():
			}
			if tty {
				fmt.Fprint(w, "\r\033[K") // clear the countdown line
			}
			return
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-finished
	}
}

// syncWriter serialises writes from the command and its countdown.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func unwrapWriter(w io.Writer) io.Writer {
	if s, ok := w.(*syncWriter); ok {
		return s.w
	}
	return w
}
