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
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/testutil"
)

func TestCrashSIGKILLThreeTimesLosesNothing(t *testing.T) {
	const (
		n        = 5000
		maxConns = 4 // as the independent measurement of issue 18 ran it
		kills    = 3
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rig := startCrashRig(t, ctx, "crash", "crash@contoso.com", maxConns)
	fake, js := rig.fake, rig.env.JS

	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("crash-%04d", i)
		b, _ := (&message.Message{ID: ids[i], Account: "crash", To: []string{"ops@fabrikam.com"}, Subject: ids[i], Text: "x"}).Encode()
		if _, err := queue.Publish(ctx, js, "crash", ids[i], b); err != nil {
			t.Fatal(err)
		}
	}

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("kill points from seed %d", seed)
	rig.serve()
	for k := range kills {
		// A random point in the k-th quarter of the stream.
		at := n*(k+1)/4 - n/8 + rng.IntN(n/4)
		if _, err := fake.WaitMessages(ctx, rig.base+at); err != nil {
			t.Fatalf("waiting for %d deliveries before kill %d: %v", at, k+1, err)
		}
		rig.kill()
		t.Logf("kill %d after %d deliveries", k+1, len(fake.Messages())-rig.base)
		rig.serve()
	}

	// Everything published is either delivered or dead-lettered.
	testutil.Eventually(t, ctx, "MAIL to drain", rig.mailDrained)
	rig.stop()

	seen, delivered := rig.delivered()
	dead, err := queue.ListDeadLetters(ctx, js, queue.DeadLetterFilter{})
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
	// relay_sent marker: at most one message per session, since a
	// session's next message ends only after the previous one's marker is
	// written (internal/relay, holdEnd).
	window := kills * maxConns
	fmt.Printf("crash test: %d published, %d delivered, %d dead-lettered, %d duplicates (in-flight window %d)\n",
		n, delivered, len(dead), dups, window)
	if dups > window {
		t.Errorf("%d duplicates, more than the in-flight window of %d", dups, window)
	}
}
