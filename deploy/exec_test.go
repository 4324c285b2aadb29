//go:build integration

package deploy_test

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"relay365/internal/testutil"
)

// debianPackage names the Debian package that ships each program the
// integration tests run (.ci/run installs them).
var debianPackage = map[string]string{
	"prometheus": "prometheus", "promtool": "prometheus",
	"chromium":                "chromium",
	"prometheus-alertmanager": "prometheus-alertmanager", "amtool": "prometheus-alertmanager",
	"swaks":   "swaks",
	"postfix": "postfix", "dovecot": "dovecot-core",
	"node": "nodejs",
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (Debian: apt-get install -y --no-install-recommends %s): %v", name, debianPackage[name], err)
	}
	return p
}

// run runs a command to completion; a failure fails the test with its
// output.
func run(t *testing.T, ctx context.Context, name string, args ...string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// startServer runs a server program until the test ends (SIGTERM, then
// wait), printing its output if the test failed, and returns that output
// as it grows.
func startServer(t *testing.T, bin string, args ...string) *testutil.Buffer {
	t.Helper()
	return startServerCmd(t, exec.Command(bin, args...), func(cmd *exec.Cmd) { cmd.Process.Signal(syscall.SIGTERM) })
}

// startServerCmd is startServer for a prepared command (environment,
// directory) and a server that stops its own way: stop asks it to, then
// the cleanup waits for the command to exit.
func startServerCmd(t *testing.T, cmd *exec.Cmd, stop func(*exec.Cmd)) *testutil.Buffer {
	t.Helper()
	var logs testutil.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop(cmd)
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", cmd.Path, logs.String())
		}
	})
	return &logs
}

// waitReady polls base/-/ready (Prometheus and Alertmanager both serve
// it) until it answers 200, failing the test when ctx ends first.
func waitReady(t *testing.T, ctx context.Context, what, base string) {
	t.Helper()
	testutil.Eventually(t, ctx, what+" ready", func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/-/ready", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}
