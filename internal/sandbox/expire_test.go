package sandbox_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"relay365/internal/queue"
	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
	"relay365/producer"
)

// TestQueueLifetimeTenSeconds: relay serve with --queue-lifetime 10s and
// an SMTP server nobody can deliver to (every connection drops at DATA):
// every message published ends in MAIL_DLQ as expired, none vanishes, and
// MAIL keeps mail a margin longer than the lifetime (JetStream's MaxAge
// never gets to drop it). The lifetime, not --max-deliver, must end the
// retries: with the sandbox's short retry delays a message can be tried
// 50 times (the default) within 10 s and be dead-lettered as transient.
func TestQueueLifetimeTenSeconds(t *testing.T) {
	s, _ := sandboxtest.StartWith(t, t.TempDir(), func(c *sandbox.Config) {
		c.Daemon.QueueLifetime = 10 * time.Second
		c.Daemon.MaxDeliver = 100_000
	})
	ctx := testCtx(t)
	stream, err := s.Daemon.JS.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	if got := stream.CachedInfo().Config.MaxAge; got != queue.MaxAgeFor(10*time.Second) || got <= 10*time.Second {
		t.Fatalf("MAIL's MaxAge %s, want %s: a margin above the lifetime", got, queue.MaxAgeFor(10*time.Second))
	}
	s.Fake.DropNextData(1 << 20)
	_, _, p := connect(t, s)
	const n = 8
	for i := range n {
		if _, err := p.Publish(ctx, &producer.Message{ID: fmt.Sprintf("exp-%d", i), Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "unreachable", Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, ctx, "every message in MAIL_DLQ", func() bool {
		dls, err := queue.ListDeadLetters(ctx, s.Daemon.JS, queue.DeadLetterFilter{Account: sandbox.Account})
		return err == nil && len(dls) == n
	})
	dls, _ := queue.ListDeadLetters(ctx, s.Daemon.JS, queue.DeadLetterFilter{Account: sandbox.Account})
	for _, d := range dls {
		if d.Class != "expired" || !strings.HasPrefix(d.Reason, "expired after 10s undelivered; last failure: ") {
			t.Errorf("dead letter %s: %q %q", d.ID, d.Class, d.Reason)
		}
	}
	info, err := stream.Info(ctx)
	if err != nil || info.State.Msgs != 0 {
		t.Fatalf("MAIL holds %d messages after they expired (%v)", info.State.Msgs, err)
	}
}
