//go:build crash

package daemon_test

// What the crash tests share: `relay serve` built as a binary and run as
// a separate process, an external JetStream server in the test process
// (killing the relay never kills the queue, as in production), the fake
// Office 365 with one enrolled account, and starting, killing and
// stopping the relay.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"relay365/internal/consent"
	"relay365/internal/crashpoint"
	"relay365/internal/fakeo365"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay/relaytest"
	"relay365/internal/testutil"
)

// crashRig is one crash test's world. Its methods are called from the
// test's own goroutine.
type crashRig struct {
	t       *testing.T
	ctx     context.Context
	bin     string // the relay binary
	dataDir string // --data-dir of every run, so a restart finds what the last run left
	keyFile string
	env     *queuetest.Env
	fake    *fakeo365.Server
	base    int // messages at the fake before the test's own: the consent test mail
	logs    testutil.Buffer
	runs    int
	cmd     *exec.Cmd // the relay running now, nil when none
}

// startCrashRig builds the relay, starts NATS with the MAIL streams and
// the fake Office 365 (its limits off), and enrols account alias
// (mailbox) through the real consent code with maxConns SMTP sessions.
// The relay is built with the given build tags: "crashpoints" gives it
// the crash points that serveCrashing arms (internal/crashpoint).
// Whatever the test leaves running is killed when it ends, and the
// relay's logs are printed if it failed.
func startCrashRig(t *testing.T, ctx context.Context, alias, mailbox string, maxConns int, tags ...string) *crashRig {
	t.Helper()
	dir := t.TempDir()
	r := &crashRig{t: t, ctx: ctx, bin: filepath.Join(dir, "relay"), dataDir: filepath.Join(dir, "data")}
	build := exec.CommandContext(ctx, "go", "build", "-tags", strings.Join(tags, ","), "-o", r.bin, "relay365/cmd/relay")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// Lazy fsync: the relay is killed, not NATS, and thousands of
	// publishes and acks share two cores.
	r.env = queuetest.StartSync(t, "1s")
	t.Cleanup(func() { // before NATS stops (cleanups run last first)
		if r.cmd != nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("relay logs:\n%s", r.logs.String())
		}
	})
	if err := queue.EnsureStreams(ctx, r.env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	var err error
	r.fake, err = fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1, PerDay: -1, MaxConns: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.fake.Close() })
	keyFile, accounts, store := relaytest.OpenStores(t, ctx, r.env.JS)
	r.keyFile = keyFile
	a := r.fake.Account(alias, mailbox, "contoso.onmicrosoft.com")
	a.PerMinute, a.PerDay, a.MaxConns = 1<<20, 1<<20, maxConns
	if err := (consent.Enroller{Accounts: accounts, Store: store}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		t.Fatal(err)
	}
	r.base = len(r.fake.Messages())
	return r
}

// serve starts `relay serve` against the rig's NATS with the fast retry
// and redelivery settings, extra flags appended.
func (r *crashRig) serve(extra ...string) {
	r.t.Helper()
	r.serveEnv(nil, extra...)
}

// serveCrashing starts `relay serve` as serve does, armed to kill itself
// at the crash point (RELAY_CRASHPOINT: a name, or name:N for the N-th
// hit); the rig must have built it with the crashpoints tag. waitKilled
// then waits for it to die.
func (r *crashRig) serveCrashing(point string, extra ...string) {
	r.t.Helper()
	r.serveEnv([]string{crashpoint.Env + "=" + point}, extra...)
}

func (r *crashRig) serveEnv(env []string, extra ...string) {
	r.t.Helper()
	if r.cmd != nil {
		r.t.Fatal("serve: a relay is already running")
	}
	r.runs++
	args := append([]string{"serve", "--nats-url", r.env.URL, "--key-file", r.keyFile, "--http-addr", "off",
		"--data-dir", r.dataDir, "--ack-wait", "2s", "--retry-base", "50ms", "--retry-max", "500ms",
		"--pause-base", "50ms", "--pause-max", "500ms", "--shutdown-grace", "5s", "--log-format", "json", "--log-level", "warn"},
		extra...)
	cmd := exec.Command(r.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	fmt.Fprintf(&r.logs, "---- run %d\n", r.runs)
	cmd.Stdout, cmd.Stderr = &r.logs, &r.logs
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.cmd = cmd
}

// kill ends the running relay with SIGKILL: no shutdown, no grace.
func (r *crashRig) kill() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
	r.cmd.Wait()
	r.cmd = nil
}

// waitKilled waits until the running relay dies by itself, as one armed
// at a crash point does, and fails the test unless SIGKILL ended it.
func (r *crashRig) waitKilled() {
	r.t.Helper()
	cmd := r.cmd
	r.cmd = nil
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			r.t.Fatalf("relay serve ended with %v, want killed by SIGKILL at its crash point", err)
		}
	case <-r.ctx.Done():
		cmd.Process.Kill()
		<-exited
		r.t.Fatal("relay serve did not reach its crash point before the deadline")
	}
}

// stop ends the running relay with SIGTERM, which must exit cleanly.
func (r *crashRig) stop() {
	r.t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	if err := r.cmd.Wait(); err != nil {
		r.t.Errorf("relay serve after SIGTERM: %v", err)
	}
	r.cmd = nil
}

// delivered counts the messages the fake Office 365 received since the
// consent test mail, by Subject.
func (r *crashRig) delivered() (bySubject map[string]int, total int) {
	msgs := r.fake.Messages()[r.base:]
	bySubject = map[string]int{}
	for _, m := range msgs {
		bySubject[m.Subject]++
	}
	return bySubject, len(msgs)
}

// mailDrained reports whether the MAIL stream holds nothing: every
// message was acked (sent or dead-lettered) and removed.
func (r *crashRig) mailDrained() bool {
	mail, err := r.env.JS.Stream(r.ctx, queue.StreamMail)
	if err != nil {
		return false
	}
	info, err := mail.Info(r.ctx)
	return err == nil && info.State.Msgs == 0
}

// smtpTLS waits until the relay's SMTP front door answers on addr and
// returns the TLS a local client uses: trust in the loopback CA the relay
// made in <data-dir>/smtp-tls/ca.pem. The relay makes the CA before it
// listens, so once the port answers the file is whole; later runs keep
// it.
func (r *crashRig) smtpTLS(addr string) *tls.Config {
	r.t.Helper()
	testutil.Eventually(r.t, r.ctx, "the SMTP front door to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	pem, err := os.ReadFile(filepath.Join(r.dataDir, "smtp-tls", "ca.pem"))
	if err != nil {
		r.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		r.t.Fatal("the relay's smtp-tls/ca.pem holds no certificate")
	}
	host, _, _ := net.SplitHostPort(addr)
	return &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
}
