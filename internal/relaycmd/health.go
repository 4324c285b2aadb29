package relaycmd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"relay365/internal/buildinfo"
	"relay365/internal/cli"
	"relay365/internal/daemon"
)

// runHealth is `relay health`: a container's HEALTHCHECK (the distroless
// image has no curl or wget). It asks a running relay serve for /healthz
// (the process serves; --ready: /readyz, it can deliver) on its
// --http-addr, which it reads from RELAY_HTTP_ADDR as serve does, and
// exits 0 when the answer is 200, 1 otherwise, saying why.
func runHealth(ctx context.Context, args []string, env Env) error {
	fs := newFlags("health", env)
	addr := fs.String("http-addr", envOr(env, "RELAY_HTTP_ADDR", daemon.DefaultHTTPAddr), "relay serve's --http-addr; a wildcard host (:9465, 0.0.0.0:9465) is asked on loopback (env RELAY_HTTP_ADDR)")
	ready := fs.Bool("ready", false, "ask /readyz (delivering: NATS connected, an account with a usable token) instead of /healthz (the process serves)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cli.CheckTimeout(*timeout); err != nil {
		return err
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	url, err := healthURL(*addr, path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %v (is relay serve running with --http-addr %s?)", url, err, *addr)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, msg)
	}
	fmt.Fprintf(env.Stdout, "%s: %s\n", url, msg)
	return nil
}

// healthURL is the URL of path on a relay listening on addr; a wildcard
// or empty host is reached on loopback.
func healthURL(addr, path string) (string, error) {
	if addr == "" || addr == "off" {
		return "", cli.Usagef("--http-addr %q: the relay serves no health endpoint; name its address", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", cli.Usagef("--http-addr %q: %v", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::", "[::]":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// runVersion is `relay version` (and relay --version): the module
// version, VCS commit, its time and the Go version of this binary, the
// labels of relay_build_info.
func runVersion(ctx context.Context, args []string, env Env) error {
	if err := parse(newFlags("version", env), args); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "relay %s\n", buildinfo.Read())
	return nil
}
