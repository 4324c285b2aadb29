package relaycmd_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/relaycmd"
)

// A purge that removes a dead letter after the replay queued its copy and
// before the replay removes it: the dead letter is gone, the copy queued,
// and the replay must say "queued again", not fail with "queued again
// but still in MAIL_DLQ", which sends the operator after a dead letter
// that is not there (the server answers the late removal with a generic
// error, 10057 "no message found", not "message not found").
func TestDLQReplayRemovedMeanwhileIsReplayed(t *testing.T) {
	env, ctx := deadLetters(t)
	proxy := queuetest.StartHoldProxy(t, env.URL, "$JS.API.STREAM.MSG.DELETE.")
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- relaycmd.Run(rctx, []string{"dlq", "replay", "1", "--nats-url", proxy.URL}, relaycmd.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
	}()
	select {
	case <-proxy.Held:
	case code := <-done:
		t.Fatalf("replay ended (exit %d) before it removed its dead letter\n%s%s", code, out.String(), errOut.String())
	case <-ctx.Done():
		t.Fatal("the replay never removed its dead letter")
	}
	if code, pout, perr := run(t, "dlq", "purge", "--yes", "--nats-url", env.URL); code != 0 {
		t.Fatalf("purge: exit %d\n%s%s", code, pout, perr)
	}
	proxy.Release()
	var code int
	select {
	case code = <-done:
	case <-ctx.Done():
		t.Fatal("the replay did not end")
	}
	t.Logf("replay: exit %d\n%s%s", code, out.String(), errOut.String())
	if n := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); n != 1 {
		t.Fatalf("MAIL holds %d messages, want the replayed copy", n)
	}
	if code != 0 || !strings.Contains(out.String(), "dead letter 1 queued again as MAIL sequence") || strings.Contains(out.String()+errOut.String(), "still in") {
		t.Fatalf("replay of a dead letter purged before its removal: exit %d\n%s%s", code, out.String(), errOut.String())
	}
}
