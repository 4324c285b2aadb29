package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// TestCloseWithNATSGoneEnds: the NATS server goes away while a send is in
// flight at a slow Office 365 and the SMTP front door is open; the stop
// (SIGTERM) must still end, within the grace and a bound, not wait on
// acks, markers and consumer calls that can never be answered.
func TestCloseWithNATSGoneEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fake, dir, keyFile := shutdownSetup(t)
	env := queuetest.Start(t)
	const grace = 2 * time.Second
	d, err := daemon.Start(ctx, daemon.Config{
		NATSURL: env.URL, DataDir: dir, KeyFile: keyFile, HTTPAddr: "127.0.0.1:0",
		AckWait: 3 * time.Second, ShutdownGrace: grace, Retry: fast, Pause: fast,
		SMTP: ingress.Config{Listen: "127.0.0.1:0"},
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	connectAccount(t, ctx, d, fake, "gone", "gone@contoso.com")
	fake.DelayNextData(1, time.Hour)
	b, _ := (&message.Message{ID: "gone-1", Account: "gone", To: []string{"ops@fabrikam.com"}, Subject: "gone", Text: "x"}).Encode()
	if _, err := queue.Publish(ctx, d.JS, "gone", "gone-1", b); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for fake.DataInProgress() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the send never reached the end of DATA")
		case <-tick.C:
		}
	}
	env.Server.Shutdown()
	env.Server.WaitForShutdown()

	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	// A failure bound, not a measurement: the grace, the 2 s QUIT, the
	// 5 s HTTP shutdown and the 2 s flush, with room to spare.
	bound := grace + 30*time.Second
	select {
	case <-closed:
	case <-time.After(bound):
		t.Fatalf("Close did not return within %v with NATS gone", bound)
	}
}
