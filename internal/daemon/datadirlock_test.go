package daemon_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/daemon"
	"relay365/internal/token"
)

// TestSecondServeOnTheSameDataDirIsRefused: two relay serve processes on
// one data directory would run two embedded nats-servers on one JetStream
// store (nats-server takes no lock on it), each recovering and writing the
// other's files. With the default ports the second one fails only because
// 4222 is taken, and only after its server has opened and recovered the
// store; with another --nats-listen it ran. The second must be refused
// before it touches the store, saying why, and the directory must be free
// again once the first has stopped.
func TestSecondServeOnTheSameDataDirIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "token.key")
	if _, err := token.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{DataDir: dir, KeyFile: keyFile, HTTPAddr: "off", NATSListen: "127.0.0.1:0", NATSSync: "1s"}
	first, err := daemon.Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	second, err := daemon.Start(ctx, cfg, zerolog.Nop())
	if err == nil {
		second.Close()
		t.Fatal("a second relay serve on the same data directory started its own embedded server on the first one's JetStream store")
	}
	if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second relay serve refused with %q; want the data directory named and said to be in use", err)
	}
	// The first one is unharmed.
	if _, err := first.Snapshot(ctx); err != nil {
		t.Fatalf("the first relay after the refused second: %v", err)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := daemon.Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("start after the first stopped: %v", err)
	}
	again.Close()
}
