//go:build crash

package daemon_test

// The crash test: `relay serve` as a separate process, killed
// with SIGKILL three times at random points of a 5,000-message stream and
// restarted. NATS runs in the test process (an external server, as in
// production), so a kill loses the relay's memory, its SMTP sessions and
// its unacked deliveries, never the store. The fake Office 365 runs here
// too and counts what arrives.
//
// It takes 20-60 seconds (building the binary, redelivery after each
// kill), so it runs behind the build tag crash, in its own .ci/run step:
//
//	go test -tags crash -run TestCrash -v ./internal/daemon

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relay/relaytest"
	"relay365/internal/testutil"
)

func TestCrashSIGKILLThreeTimesLosesNothing(t *testing.T) {
	const (
		n        = 5000
		maxConns = 6
		kills    = 3
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "relay")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "relay365/cmd/relay")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	env := queuetest.StartSync(t, "1s") // the relay is killed, not NATS
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	fake, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir(), PerMinute: -1, PerDay: -1, MaxConns: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	keyFile, accounts, store := relaytest.OpenStores(t, ctx, env.JS)
	a := fake.Account("crash", "crash@contoso.com", "contoso.onmicrosoft.com")
	a.PerMinute, a.PerDay, a.MaxConns = 1<<20, 1<<20, maxConns
	if err := (consent.Enroller{Accounts: accounts, Store: store}).SignIn(ctx, a, consent.FollowURL(ctx)); err != nil {
		t.Fatal(err)
	}
	base := len(fake.Messages()) // the consent test mail

	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("crash-%04d", i)
		b, _ := (&message.Message{ID: ids[i], Account: "crash", To: []string{"ops@fabrikam.com"}, Subject: ids[i], Text: "x"}).Encode()
		if _, err := queue.Publish(ctx, env.JS, "crash", ids[i], b); err != nil {
			t.Fatal(err)
		}
	}

	var logs bytes.Buffer
	run := 0
	start := func() *exec.Cmd {
		run++
		cmd := exec.Command(bin, "serve", "--nats-url", env.URL, "--key-file", keyFile, "--http-addr", "off",
			"--data-dir", filepath.Join(dir, "data"), "--ack-wait", "2s", "--retry-base", "50ms", "--retry-max", "500ms",
			"--pause-base", "50ms", "--pause-max", "500ms", "--shutdown-grace", "5s", "--log-format", "json", "--log-level", "warn")
		fmt.Fprintf(&logs, "---- run %d\n", run)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	defer func() {
		if t.Failed() {
			t.Logf("relay logs:\n%s", logs.String())
		}
	}()

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("kill points from seed %d", seed)
	cmd := start()
	for k := range kills {
		// A random point in the k-th quarter of the stream.
		at := n*(k+1)/4 - n/8 + rng.IntN(n/4)
		if _, err := fake.WaitMessages(ctx, base+at); err != nil {
			cmd.Process.Kill()
			t.Fatalf("waiting for %d deliveries before kill %d: %v", at, k+1, err)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		t.Logf("kill %d after %d deliveries", k+1, len(fake.Messages())-base)
		cmd = start()
	}

	// Everything published is either delivered or dead-lettered.
	mail, _ := env.JS.Stream(ctx, queue.StreamMail)
	testutil.Eventually(t, ctx, "MAIL to drain", func() bool {
		info, err := mail.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("relay serve after SIGTERM: %v", err)
	}

	seen := map[string]int{}
	for _, m := range fake.Messages()[base:] {
		seen[m.Subject]++
	}
	dead, err := queue.ListDeadLetters(ctx, env.JS, queue.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	dlq := map[string]bool{}
	for _, e := range dead {
		dlq[e.ID] = true
	}
	dups := 0
	for _, id := range ids {
		c := seen[id]
		if c == 0 && !dlq[id] {
			t.Errorf("%s lost: neither delivered nor dead-lettered", id)
		}
		if c > 1 {
			dups += c - 1
		}
	}
	for id := range seen {
		if !slices.Contains(ids, id) {
			t.Errorf("delivered %q, which was never published", id)
		}
	}
	// A kill can repeat only what was between Office 365's 250 and the
	// relay_sent marker: at most one message per session.
	window := kills * maxConns
	fmt.Printf("crash test: %d published, %d delivered, %d dead-lettered, %d duplicates (in-flight window %d)\n",
		n, len(fake.Messages())-base, len(dead), dups, window)
	if dups > window {
		t.Errorf("%d duplicates, more than the in-flight window of %d", dups, window)
	}
}
