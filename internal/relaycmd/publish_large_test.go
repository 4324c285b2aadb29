package relaycmd_test

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// relay publish --attach: a file too large for a NATS message is stored
// in the body store and the queued message names it; one over 35 MB
// exits 1 with its size and the limit, and nothing is queued.
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
	store, err := body.Open(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
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
	if code != 2 || !strings.Contains(errOut, "over the size limit of 36700160 bytes (35.0 MB)") {
		t.Fatalf("36 MB: exit %d, %s", code, errOut)
	}
	if info, _ := mail.Info(ctx); info.State.Msgs != 1 {
		t.Errorf("MAIL holds %d messages, want the first only", info.State.Msgs)
	}
}
