package relaycmd_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// relay publish --attach: a file too large for a NATS message is stored
// in the body store and the queued message names it; one over 35 MB
// exits 2 with its size and the limit, and nothing is queued.
func TestPublishAttachLarge(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	dir := t.TempDir()
	pdf := filepath.Join(dir, "report.pdf")
	if err := os.WriteFile(pdf, []byte(strings.Repeat("%PDF-1.7 report ", 40000)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--subject", "report", "--attach", pdf)
	if code != 0 || !strings.Contains(out, "queued") {
		t.Fatalf("publish --attach: %d\n%s%s", code, out, errOut)
	}
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	m, err := mail.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := message.Decode(m.Data)
	if err != nil || msg.Body == nil || len(m.Data) > 1024 {
		t.Fatalf("queued %d bytes, body %v (%v): want a reference", len(m.Data), msg, err)
	}
	store := openBodies(t, ctx, env)
	rc, err := store.Open(ctx, *msg.Body)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := io.ReadAll(rc)
	rc.Close()
	for _, want := range []string{"Subject: report", `Content-Type: application/pdf`, `filename=report.pdf`} {
		if !strings.Contains(string(stored), want) {
			t.Errorf("stored body lacks %q", want)
		}
	}

	huge := filepath.Join(dir, "huge.bin")
	if err := os.WriteFile(huge, make([]byte, 27<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = run(t, "publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--attach", huge)
	if code != 1 || !strings.Contains(errOut, "over the size limit of 36700160 bytes (35.0 MB)") {
		t.Fatalf("36 MB: exit %d, %s", code, errOut)
	}
	if info, _ := mail.Info(ctx); info.State.Msgs != 1 {
		t.Errorf("MAIL holds %d messages, want the first only", info.State.Msgs)
	}
}

// relay publish --attach and --html-file read no more of a file than
// could fit in a message: a stream that does not end (a FIFO, a device,
// a log still being written) is refused as too large once it has passed
// 35 MB, instead of being read into memory until its writer stops, or
// forever.
func TestPublishFilesStopReadingPastTheLimit(t *testing.T) {
	for _, flag := range []string{"--attach", "--html-file"} {
		t.Run(flag, func(t *testing.T) { publishStopsReadingPastTheLimit(t, flag) })
	}
}

func publishStopsReadingPastTheLimit(t *testing.T, flag string) {
	env, ctx := queuetest.StartMail(t)
	fifo := filepath.Join(t.TempDir(), "endless.log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("no FIFO here: %v", err)
	}
	// The writer sends 40 MB, past the limit, then holds the FIFO open
	// without writing more, as a log still being written does.
	release := make(chan struct{})
	wrote := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			wrote <- err
			return
		}
		defer w.Close()
		chunk := make([]byte, 1<<20)
		for range 40 {
			if _, err := w.Write(chunk); err != nil {
				break // the reader stopped reading
			}
		}
		<-release
		wrote <- nil
	}()
	type result struct {
		code        int
		out, errOut string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := run(t, "publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--subject", "log", flag, fifo)
		done <- result{code, out, errOut}
	}()
	var r result
	select {
	case r = <-done:
		close(release)
	case <-ctx.Done():
		t.Errorf("relay publish %s of a FIFO holding 40 MB was still reading, waiting for its end, when the test's context ended", flag)
		close(release) // the writer closes: the read ends, to report what it did
		r = <-done
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	// Exit 1, as for a file of 27 MB that base64 takes past 35 MB (and
	// any message over its account's limit, issue 16): one condition,
	// one exit code, however large the file.
	if r.code != 1 || !strings.Contains(r.errOut, "over the size limit") {
		t.Errorf("exit %d, stderr %q; want exit 1, over the size limit", r.code, r.errOut)
	}
	if n := queuetest.Msgs(t, context.Background(), env.JS, queue.StreamMail); n != 0 {
		t.Errorf("MAIL holds %d, want nothing queued", n)
	}
}
