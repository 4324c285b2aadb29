package daemon_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/testutil"
	"relay365/internal/token"
)

// startHTTP runs a daemon on an embedded server with its HTTP server on a
// free loopback port; mod changes the config first.
func startHTTP(t *testing.T, ctx context.Context, mod func(*daemon.Config)) *daemon.Daemon {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{DataDir: t.TempDir(), KeyFile: keyFile, HTTPAddr: "127.0.0.1:0", NATSListen: "127.0.0.1:0", NATSSync: "1s"}
	if mod != nil {
		mod(&cfg)
	}
	d, err := daemon.Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Every answer of the HTTP server forbids framing, sniffing and any
// script; the status page's one inline style is allowed by its hash.
func TestHTTPSecurityHeaders(t *testing.T) {
	ctx := testContext(t)
	d := startHTTP(t, ctx, nil)
	base := "http://" + d.HTTPAddr
	for _, tc := range []struct {
		path, accept, contentType string
		code                      int
	}{
		{"/status", "text/html", "text/html", 200},
		{"/status", "application/json", "application/json", 200},
		{"/status?format=html", "", "text/html", 200},
		{"/metrics", "", "text/plain", 200},
		{"/healthz", "", "text/plain", 200},
		{"/readyz", "", "text/plain", 503}, // no account yet
		{"/no-such-page", "", "text/plain", 404},
	} {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+tc.path, nil)
		if tc.accept != "" {
			req.Header.Set("Accept", tc.accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		what := tc.path + " (" + tc.accept + ")"
		if resp.StatusCode != tc.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.contentType) {
			t.Errorf("%s: %d %s, want %d %s", what, resp.StatusCode, resp.Header.Get("Content-Type"), tc.code, tc.contentType)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: Content-Security-Policy %q lacks %q", what, csp, want)
			}
		}
		if strings.Contains(csp, "script-src") || strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "*") {
			t.Errorf("%s: Content-Security-Policy %q allows too much", what, csp)
		}
		if got := resp.Header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("%s: X-Frame-Options %q", what, got)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q", what, got)
		}
		if tc.contentType != "text/html" {
			continue
		}
		// The page works under its policy: no script, no style
		// attribute, and each <style> element's hash is allowed.
		page := string(body)
		if strings.Contains(page, "<script") || strings.Contains(page, " style=") {
			t.Errorf("%s: the page has a script or a style attribute", what)
		}
		styles := 0
		for rest := page; ; {
			_, after, ok := strings.Cut(rest, "<style>")
			if !ok {
				break
			}
			css, next, _ := strings.Cut(after, "</style>")
			sum := sha256.Sum256([]byte(css))
			if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, "style-src "+h) {
				t.Errorf("%s: the page's style (hash %s) is not allowed by %q", what, h, csp)
			}
			styles++
			rest = next
		}
		if styles == 0 {
			t.Errorf("%s: no <style> on the page", what)
		}
	}
}

// get sends one kept-alive request on c and reads its answer.
func get(t *testing.T, c net.Conn, r *bufio.Reader, path string) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: relay\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// A connection beyond the limit is answered 503 at once and closed; the
// held ones keep working and a freed slot serves again.
func TestHTTPConnectionLimit(t *testing.T) {
	ctx := testContext(t)
	d := startHTTP(t, ctx, func(c *daemon.Config) { c.HTTPMaxConns = 2 })
	var held []net.Conn
	for range 2 {
		c, r := dial(t, d.HTTPAddr)
		if resp := get(t, c, r, "/healthz"); resp.StatusCode != 200 {
			t.Fatalf("within the limit: %d", resp.StatusCode)
		}
		held = append(held, c) // kept alive, idle
	}
	c, r := dial(t, d.HTTPAddr)
	resp := get(t, c, r, "/healthz")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || !strings.Contains(string(body), "too many connections") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the limit: %d close=%v %q %v", resp.StatusCode, resp.Close, body, resp.Header)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("the refused connection stays open: %v", err)
	}
	held[0].Close()
	testutil.Eventually(t, ctx, "a freed slot serves again", func() bool {
		c, r := dial(t, d.HTTPAddr)
		defer c.Close()
		return get(t, c, r, "/healthz").StatusCode == 200
	})
}

// A client that sends nothing, or half a request, or stays idle after an
// answer, is disconnected by the server's timeouts.
func TestHTTPTimeoutsDisconnect(t *testing.T) {
	ctx := testContext(t)
	d := startHTTP(t, ctx, func(c *daemon.Config) {
		c.HTTPReadTimeout, c.HTTPIdleTimeout = 300*time.Millisecond, 300*time.Millisecond
	})
	closedByServer := func(what string, c net.Conn, r *bufio.Reader) {
		t.Helper()
		// The deadline only bounds the test: the server must close first.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, r)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: still open after 10 s", what)
		}
	}
	c, r := dial(t, d.HTTPAddr)
	closedByServer("a client that sends nothing", c, r)

	c, r = dial(t, d.HTTPAddr)
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: relay\r\n"); err != nil {
		t.Fatal(err)
	}
	closedByServer("a client that stops inside its headers", c, r)

	c, r = dial(t, d.HTTPAddr)
	if resp := get(t, c, r, "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	closedByServer("an idle kept-alive connection", c, r)
}
