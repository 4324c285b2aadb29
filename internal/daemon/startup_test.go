package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/testutil"
	"relay365/internal/token"
)

// TestStartWaitsForNATS: relay serve against an external NATS that is not
// up yet does not exit: it tries again on its schedule, says so in the log,
// and answers /healthz ok and /readyz 503 with what it waits for; once the
// server is up it starts. A later loss and return of NATS are logged.
func TestStartWaitsForNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	key := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	natsPort := testutil.FreePort(t)
	httpAddr := testutil.FreeAddr(t)
	logs := &testutil.Buffer{}
	started := make(chan *daemon.Daemon, 1)
	failed := make(chan error, 1)
	go func() {
		d, err := daemon.Start(ctx, daemon.Config{
			NATSURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), KeyFile: key, HTTPAddr: httpAddr, DataDir: dir,
		}, zerolog.New(logs))
		if err != nil {
			failed <- err
			return
		}
		started <- d
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testutil.Eventually(t, ctx, "a logged retry and /readyz saying what it waits for", func() bool {
		select {
		case err := <-failed:
			t.Fatalf("Start gave up: %v", err)
		default:
		}
		code, body := get("/readyz")
		health, _ := get("/healthz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "connecting to NATS") && health == http.StatusOK &&
			strings.Contains(logs.String(), "NATS not reachable yet")
	})
	ns := startNATS(t, dir, natsPort)
	var d *daemon.Daemon
	select {
	case d = <-started:
	case err := <-failed:
		t.Fatalf("Start: %v", err)
	case <-ctx.Done():
		t.Fatal("Start did not return once NATS was up")
	}
	defer d.Close()
	if code, body := get("/status"); code != http.StatusOK {
		t.Fatalf("/status after start: %d %s", code, body)
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	testutil.Eventually(t, ctx, "the loss logged", func() bool { return strings.Contains(logs.String(), "NATS connection lost") })
	startNATS(t, dir, natsPort)
	testutil.Eventually(t, ctx, "the return logged", func() bool { return strings.Contains(logs.String(), "NATS reconnected") })
}

// startNATS runs a JetStream server on port with its store in dir.
func startNATS(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: filepath.Join(dir, "js"), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// TestRunStoppedWhileWaitingForNATSSaysSo: stopped while it still waits
// for NATS, relay serve ends cleanly and its log's last line says why it
// stopped (README: the last line says why), as it does after a run.
func TestRunStoppedWhileWaitingForNATSSaysSo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	key := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.Buffer{}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(runCtx, daemon.Config{
			NATSURL: fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t)), KeyFile: key, HTTPAddr: "off", DataDir: dir,
		}, zerolog.New(logs))
	}()
	testutil.Eventually(t, ctx, "a logged retry", func() bool { return strings.Contains(logs.String(), "NATS not reachable yet") })
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v, want a clean stop", err)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "relay serve stopped") {
		t.Fatalf("last log line %s: want it to say the relay stopped", last)
	}
}
