package daemon_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// TestCloseLeavesNoGoroutines: a daemon with every part running (embedded
// NATS, token service, engine with a lane that has sent, limits, SMTP
// front door, HTTP) leaves nothing running after Close: a goroutine left
// behind holds the closed connection, the store or a listener, and a
// process that restarts the daemon in place (the sandbox, the bench)
// piles them up.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fake, dir, keyFile := shutdownSetup(t)
	baseline := runtime.NumGoroutine()

	d, err := daemon.Start(ctx, daemon.Config{
		DataDir: dir, KeyFile: keyFile, HTTPAddr: "127.0.0.1:0", NATSListen: "127.0.0.1:0", NATSSync: "1s",
		AckWait: 3 * time.Second, ShutdownGrace: 10 * time.Second, Retry: fast, Pause: fast,
		SMTP: ingress.Config{Listen: "127.0.0.1:0"},
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	connectAccount(t, ctx, d, fake, "leak", "leak@contoso.com")
	b, _ := (&message.Message{ID: "leak-1", Account: "leak", To: []string{"ops@fabrikam.com"}, Subject: "leak", Text: "x"}).Encode()
	if _, err := queue.Publish(ctx, d.JS, "leak", "leak-1", b); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.WaitMessages(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// The fake's own idle connections end on their side when the relay's
	// sessions have quit; a small slack covers runtime goroutines.
	const slack = 3
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for runtime.NumGoroutine() > baseline+slack {
		select {
		case <-ctx.Done():
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			var left []string
			for g := range strings.SplitSeq(string(buf[:n]), "\n\n") {
				if !strings.Contains(g, "fakeo365") && !strings.Contains(g, "testing.") {
					left = append(left, g)
				}
			}
			t.Fatalf("%d goroutines after Close, %d before Start:\n%s", runtime.NumGoroutine(), baseline, strings.Join(left, "\n\n"))
		case <-tick.C:
		}
	}
}
