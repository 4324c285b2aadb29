package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// TestLeaderReaderNeedsNoDirectGet reads a KV value as the worker role
// with direct gets of its bucket denied: LeaderReader asks the stream
// leader (STREAM.MSG.GET, which kvRead grants), so it finds the value,
// its revision, and a deletion as not found, while kv.Get cannot read
// at all (docs/design.md §7.10).
func TestLeaderReaderNeedsNoDirectGet(t *testing.T) {
	const bucket = "relay_pacing"
	srv := queuetest.StartRolesWithoutDirectGet(t, "KV_"+bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, admin := srv.As(t, roles.Admin)
	akv, err := queue.OpenKeyValue(ctx, admin, jetstream.KeyValueConfig{Bucket: bucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := akv.Put(ctx, "box", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := akv.Put(ctx, "gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := akv.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}

	_, js := srv.As(t, roles.Worker)
	r := queue.NewLeaderReader(js, bucket)
	v, got, found, err := r.Last(ctx, "box")
	if err != nil || !found || string(v) != "v1" || got != rev {
		t.Fatalf("Last(box) = %q, rev %d, found %v, %v; want v1 at revision %d", v, got, found, err, rev)
	}
	for _, key := range []string{"gone", "never"} {
		if v, _, found, err := r.Last(ctx, key); err != nil || found {
			t.Fatalf("Last(%s) = %q, found %v, %v; want not found", key, v, found, err)
		}
	}

	wkv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
	defer gcancel()
	if _, err := wkv.Get(gctx, "box"); err == nil {
		t.Fatal("kv.Get read the value with direct gets denied: the test does not tell the two reads apart")
	}
}
