package relaycmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"relay365/internal/token"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

func TestServeRefusesBadRoles(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--roles", "tokens,mailer", "--key-file", "k"},
		{"serve", "--roles", "tokens"}, // the tokens role needs the key
	} {
		var stderr bytes.Buffer
		code := Run(context.Background(), args, Env{Stdout: &bytes.Buffer{}, Stderr: &stderr})
		if code != ExitUsage || !strings.Contains(stderr.String(), "roles") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
	}
}

// A key file that is missing, open to others or not a key stops relay
// serve at start with exit 2, as a bad flag does (README), saying what
// to fix.
func TestServeRefusesABadKeyFile(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	if _, err := token.GenerateKeyFile(open); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.key")
	if err := os.WriteFile(junk, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ file, says string }{
		{filepath.Join(dir, "missing.key"), "does not exist"},
		{open, "chmod 600"},
		{junk, junk},
	} {
		r := run(t, nil, "", "serve", "--key-file", tt.file, "--nats-listen", "127.0.0.1:0", "--http-addr", "off", "--data-dir", t.TempDir())
		if r.code != ExitUsage || !strings.Contains(r.stderr, tt.says) {
			t.Errorf("--key-file %s: exit %d, want %d saying %q; stderr:\n%s", tt.file, r.code, ExitUsage, tt.says, r.stderr)
		}
	}
}

// A NATS URL no connection could use stops relay serve at start (it
// once waited for that server for ever), and the other commands too.
func TestMalformedNATSURLIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--nats-url", "nats://127.0.0.1:4222x", "--key-file", "k", "--http-addr", "off"},
		{"dlq", "list", "--nats-url", "nats://127.0.0.1:4222x"},
		{"publish", "--nats-url", "http://nats.contoso.com", "--account", "a", "--to", "b@contoso.com", "--subject", "s", "--text", "t"},
	} {
		r := run(t, nil, "", args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, "--nats-url") {
			t.Errorf("%v: exit %d, want %d naming --nats-url; stderr %q", args, r.code, ExitUsage, r.stderr)
		}
	}
}

// TestServeLogsItsFatalError: when relay serve stops for good (here NATS
// refuses its login, which waiting does not heal), the last line of its
// log says why, as JSON like every other line.
func TestServeLogsItsFatalError(t *testing.T) {
	ns := startPlainNATS(t, &server.Options{Username: "relay", Password: "right-password", JetStream: true, StoreDir: t.TempDir()})
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("wrong-password"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "", "serve", "--nats-url", ns.ClientURL(), "--nats-user", "relay", "--nats-password-file", pw,
		"--key-file", key, "--http-addr", "off", "--log-format", "json", "--data-dir", t.TempDir())
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	var last map[string]any
	for i := len(lines) - 1; i >= 0 && last == nil; i-- {
		if strings.HasPrefix(lines[i], "{") {
			_ = json.Unmarshal([]byte(lines[i]), &last)
		}
	}
	if r.code != 1 || last["message"] != "relay serve stopped" || last["level"] != "error" || !strings.Contains(fmt.Sprint(last["error"]), "Authorization Violation") {
		t.Fatalf("exit %d, last JSON log line %v; stderr:\n%s", r.code, last, r.stderr)
	}
}
