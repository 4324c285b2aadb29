//go:build integration

package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/testutil"
)

// TestNATSPreStopSignalsLameDuck runs the NATS StatefulSet's stop as the
// kubelet does it, against a nats-server built from go.mod's version with
// deploy/kubernetes/nats.conf (ports, store and pid file moved into the
// test's directory, the cluster block left out: one server): the preStop
// hook's command, then SIGTERM. The hook must find the server through the
// pid file and put it into lame duck mode (a client is told), and the
// SIGTERM must not cut that short: the server goes on to close its
// clients after the grace period and exits by itself.
func TestNATSPreStopSignalsLameDuck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "nats-server")
	run(t, ctx, "go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")

	opts := natsK8sOptions(t) // the pod's environment too
	conf, err := os.ReadFile(path("deploy/kubernetes/nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	port, pidFile := testutil.FreePort(t), filepath.Join(dir, "nats.pid")
	c := string(conf)
	for _, r := range []struct{ old, new string }{
		{"\nport: 4222\n", fmt.Sprintf("\nlisten: 127.0.0.1:%d\n", port)},
		{"\nhttp: 8222\n", fmt.Sprintf("\nhttp: 127.0.0.1:%d\n", testutil.FreePort(t))},
		{"store_dir: /data", "store_dir: " + filepath.Join(dir, "js")},
		{"pid_file: " + opts.PidFile, "pid_file: " + pidFile},
	} {
		if !strings.Contains(c, r.old) {
			t.Fatalf("deploy/kubernetes/nats.conf has no %q", r.old)
		}
		c = strings.Replace(c, r.old, r.new, 1)
	}
	c = regexp.MustCompile(`(?s)\ncluster \{.*?\n\}\n`).ReplaceAllString(c, "\n")
	auth, err := os.ReadFile(path("deploy/kubernetes/nats-auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"nats.conf": []byte(c), "auth.conf": auth} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	var logs testutil.Buffer
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "nats.conf"))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("nats-server output:\n%s", logs.String())
		}
	})

	ldm := make(chan struct{})
	var nc *nats.Conn
	testutil.Eventually(t, ctx, "a client connected to nats-server", func() bool {
		nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port), nats.UserInfo("relay-worker", "pw-WORKER"),
			nats.NoReconnect(), nats.LameDuckModeHandler(func(*nats.Conn) { close(ldm) }))
		return err == nil
	})
	defer nc.Close()

	// The kubelet runs the hook in the container, where nats-server is the
	// image's; here it is the one built above.
	hook := []string{bin, "-sl=ldm=" + pidFile}
	if out, err := exec.CommandContext(ctx, hook[0], hook[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("preStop %q: %v\n%s", hook, err, out)
	}
	select {
	case <-ldm:
	case <-ctx.Done():
		t.Fatal("the client was not told of lame duck mode")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("nats-server exited with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("nats-server did not exit after its lame duck")
	}
	out := logs.String()
	term, closing := strings.Index(out, `Trapped "terminated" signal`), strings.Index(out, "Closing existing clients")
	if !strings.Contains(out, "Entering lame duck mode") || term < 0 || closing < term {
		t.Fatalf("want lame duck mode entered, then the SIGTERM trapped, then the clients closed by the lame duck (grace period %s): SIGTERM ended the lame duck", opts.LameDuckGracePeriod)
	}
}
