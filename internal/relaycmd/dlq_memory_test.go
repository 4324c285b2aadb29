package relaycmd_test

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relaycmd"
)

// TestDLQFloodHoldsOnePull: after an incident MAIL_DLQ holds thousands of
// dead letters, each as large as an inline message may be. relay dlq list
// --json and relay dlq purge read their content (the JSON to print, the
// body references to delete); they held every one in memory before
// writing or purging anything, so the command's memory grew with the
// DLQ: 64 dead letters of 1 MiB cost it 64 MiB and more. It must hold no
// more than about one pull (16 MiB) at a time (with the embedded NATS
// server of the test in the same process, less than the DLQ), the peak of its heap
// measured while it runs (collected early: garbage is not what it holds).
func TestDLQFloodHoldsOnePull(t *testing.T) {
	env, ctx := dlqEnv(t)
	const n = 64
	pad := strings.Repeat("a", 1<<20)
	for i := range n {
		id := fmt.Sprintf("big-%02d", i)
		env.DeadLetter(t, ctx, "alerts", id, []byte(`{"id":"`+id+`","text":"`+pad+`"}`), queue.DeadLetter{ID: id, Account: "alerts", Reason: "r", Class: "invalid"})
	}
	pad = ""
	// The heap's peak is the command's live memory and the garbage the
	// collector has not yet taken: collected early, it is mostly the
	// former.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	const bound = 64 << 20 // the DLQ itself: the embedded server in this process caches its blocks too
	for _, args := range [][]string{{"dlq", "list", "--json"}, {"dlq", "purge", "--yes"}} {
		t.Run(args[1], func(t *testing.T) {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			base := ms.HeapAlloc
			var peak atomic.Uint64
			stop, sampled := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(sampled)
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapAlloc > base && ms.HeapAlloc-base > peak.Load() {
						peak.Store(ms.HeapAlloc - base)
					}
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			}()
			code, errOut := runDiscarding(t, append(args, "--nats-url", env.URL)...)
			close(stop)
			<-sampled
			if code != 0 {
				t.Fatalf("relay %s: exit %d: %s", strings.Join(args, " "), code, errOut)
			}
			t.Logf("relay %s over %d dead letters of 1 MiB: heap peak %d MiB above its start", strings.Join(args, " "), n, peak.Load()>>20)
			if p := peak.Load(); p > bound {
				t.Fatalf("relay %s held %d MiB at its peak for %d dead letters of 1 MiB, want at most %d MiB (one pull, not the DLQ)",
					strings.Join(args, " "), p>>20, n, bound>>20)
			}
		})
	}
	if left := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); left != 0 {
		t.Fatalf("%d dead letters left after the purge", left)
	}
}

// runDiscarding is run with the command's output thrown away as it comes,
// so that what the test measures is the command's own memory.
func runDiscarding(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var errOut strings.Builder
	code := runWith(t, io.Discard, &errOut, args...)
	return code, errOut.String()
}

func runWith(t *testing.T, stdout, stderr io.Writer, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return relaycmd.Run(ctx, args, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr})
}
