package relaycmd_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relay365/internal/ingress"
	"relay365/internal/queue/queuetest"
)

// TestProducerCommands: add prints a generated password once and stores
// only its hash; a password file is read; list shows names and accounts,
// never a password or hash; remove removes.
func TestProducerCommands(t *testing.T) {
	env := queuetest.Start(t)
	code, out, errOut := run(t, "producer", "add", "alertmanager", "--accounts", "alerts,ops", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "producer alertmanager may send through alerts, ops") {
		t.Fatalf("add: %d %s %s", code, out, errOut)
	}
	_, generated, ok := strings.Cut(out, "password: ")
	generated = strings.TrimSpace(generated)
	if !ok || len(generated) != 32 {
		t.Fatalf("add printed no generated password: %q", out)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("a password from a file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, "producer", "add", "cron", "--accounts", "alerts", "--password-file", pwFile, "--nats-url", env.URL); code != 0 || strings.Contains(out, "password:") {
		t.Fatalf("add with a file: %d %s %s", code, out, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prods, err := ingress.OpenProducers(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	for name, pw := range map[string]string{"alertmanager": generated, "cron": "a password from a file"} {
		p, err := prods.Get(ctx, name)
		if err != nil || !ingress.CheckPassword(p.Hash, pw) || strings.Contains(p.Hash, pw) {
			t.Fatalf("%s stored as %+v (%v)", name, p, err)
		}
	}
	code, out, _ = run(t, "producer", "list", "--nats-url", env.URL)
	if code != 0 || !strings.Contains(out, "alertmanager  alerts,ops") || !strings.Contains(out, "cron") || strings.Contains(out, "argon2") || strings.Contains(out, generated) {
		t.Fatalf("list: %d %s", code, out)
	}
	if code, out, _ := run(t, "producer", "remove", "cron", "--nats-url", env.URL); code != 0 || !strings.Contains(out, "producer cron removed") {
		t.Fatalf("remove: %d %s", code, out)
	}
	if code, _, errOut := run(t, "producer", "remove", "cron", "--nats-url", env.URL); code != 1 || !strings.Contains(errOut, "no such producer") {
		t.Fatalf("removing twice: %d %s", code, errOut)
	}
}
