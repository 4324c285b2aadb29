// Package testutil holds the few helpers tests across packages share:
// a goroutine-safe buffer for capturing logs, waiting on a condition
// with a deadline (never a blind sleep), small files for secrets, free
// loopback ports for servers a test starts, a GET of a probe, an HTTP
// forward proxy (Proxy) and a TCP proxy that passes a connection's bytes
// through the test's own functions (TCPProxy).
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer is a bytes.Buffer safe for concurrent writers, such as a zerolog
// logger shared by goroutines, read by the test.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// Bytes is a copy of everything written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// String is everything written so far.
func (b *Buffer) String() string { return string(b.Bytes()) }

// Eventually checks cond every 10ms until it holds, failing the test when
// ctx ends first.
func Eventually(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// WriteFile writes content to a file named name in a fresh t.TempDir(),
// readable by the owner only (key, password and token files), and returns
// its path.
func WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// FreePort is a loopback TCP port free now, for a server the test starts
// that must be told its port in advance (another process, a restart on
// the same address). Another program may take it meanwhile, which on a
// test machine does not happen in practice.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeAddr is FreePort as host:port on 127.0.0.1.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// Get fetches url and returns its status and its body without the white
// space around it; a request that fails returns 0 and the error's text
// (a probe polled with Eventually while its server starts or stops).
func Get(ctx context.Context, url string) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}
