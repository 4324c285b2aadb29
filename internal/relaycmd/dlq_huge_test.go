package relaycmd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// hugeDLQ starts NATS (fsync every few seconds: the test writes thousands)
// with the streams and account alerts, and stores n dead letters of
// alerts in MAIL_DLQ as the worker writes them (subject, Relay-* headers,
// Nats-Msg-Id "<id>:dlq"), published asynchronously: quicker than
// dead-lettering each through a consumer.
func hugeDLQ(t *testing.T, n int) (*queuetest.Env, context.Context) {
	t.Helper()
	env := queuetest.StartSync(t, "5s")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range n {
		id := fmt.Sprintf("d-%05d", i)
		hdr := nats.Header{}
		hdr.Set(jetstream.MsgIDHeader, id+":dlq")
		hdr.Set(queue.HdrMessageID, id)
		hdr.Set(queue.HdrReason, "bad deploy")
		hdr.Set(queue.HdrClass, "invalid")
		hdr.Set(queue.HdrAttempts, "1")
		hdr.Set(queue.HdrOrigSubject, queue.Subject("alerts"))
		hdr.Set(queue.HdrOrigSeq, fmt.Sprint(i+1))
		hdr.Set(queue.HdrFirstAttempt, now)
		hdr.Set(queue.HdrLastAttempt, now)
		m := &nats.Msg{Subject: queue.DLQPrefix + "alerts", Header: hdr, Data: []byte(`{"id":"` + id + `","to":["ops@contoso.com"],"subject":"s","text":"t"}`)}
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("the dead letters were not all stored")
	}
	if got := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); got != uint64(n) {
		t.Fatalf("MAIL_DLQ holds %d, want %d", got, n)
	}
	return env, ctx
}

// After a bad deploy MAIL_DLQ holds 10,000 dead letters: every command
// works through them all, once each.
func TestDLQHuge(t *testing.T) {
	const n = 10000
	env, ctx := hugeDLQ(t, n)
	start := time.Now()
	code, out, errOut := runLong(t, "dlq", "list", "--nats-url", env.URL)
	t.Logf("list: %v", time.Since(start))
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 102 || !strings.Contains(out, fmt.Sprintf("showing the oldest 100 of %d dead letters", n)) {
		t.Fatalf("list: exit %d, %d lines\n%s", code, len(lines), errOut)
	}
	start = time.Now()
	code, out, errOut = runLong(t, "dlq", "list", "--json", "--nats-url", env.URL)
	t.Logf("list --json: %v", time.Since(start))
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != n {
		t.Fatalf("list --json: exit %d, %d lines\n%s", code, len(lines), errOut)
	}
	start = time.Now()
	code, out, errOut = runLong(t, "dlq", "replay", "--all", "--nats-url", env.URL)
	t.Logf("replay --all: %v", time.Since(start))
	if code != 0 || !strings.Contains(out, fmt.Sprintf("replayed %d dead letters", n)) {
		t.Fatalf("replay --all: exit %d\n%s\n%s", code, out[max(0, len(out)-500):], errOut)
	}
	if m, d := queuetest.Msgs(t, ctx, env.JS, queue.StreamMail), queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); m != n || d != 0 {
		t.Fatalf("after replay --all: MAIL %d, MAIL_DLQ %d; want %d and 0", m, d, n)
	}
}

// runLong is run with the time a command over thousands of dead letters
// may take on shared cores.
func runLong(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	code = runWith(t, &out, &errOut, append(args, "--timeout", "2m")...)
	return code, out.String(), errOut.String()
}

// relay dlq purge of 10,000 dead letters purges them all and says so.
func TestDLQHugePurge(t *testing.T) {
	const n = 10000
	env, ctx := hugeDLQ(t, n)
	start := time.Now()
	code, out, errOut := runLong(t, "dlq", "purge", "--yes", "--account", "alerts", "--nats-url", env.URL)
	t.Logf("purge: %v", time.Since(start))
	if code != 0 || !strings.Contains(out, fmt.Sprintf("purged %d dead letters of account alerts", n)) || strings.Contains(out, "kept") {
		t.Fatalf("purge: exit %d\n%s%s", code, out, errOut)
	}
	if d := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ); d != 0 {
		t.Fatalf("MAIL_DLQ holds %d after the purge", d)
	}
}
