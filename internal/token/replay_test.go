package token

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestStoreRefusesAReplayedGeneration: a Store that has seen an account's
// record at some generation refuses an older generation written back at a
// newer revision (the admin's replay of a captured value), and nothing
// else: a new consent by another process (authtool) over the replayed
// value or after a deletion, a stale read, and a record of an earlier
// version (generation 0) are all accepted.
func TestStoreRefusesAReplayedGeneration(t *testing.T) {
	r := startReplay(t)
	ctx, svc, tool, admin, rec, captured, first, rev := r.ctx, r.svc, r.tool, r.admin, r.rec, r.captured, r.first, r.rev
	second, _, err := svc.Get(ctx, "alerts")
	if err != nil || second.Generation <= first.Generation {
		t.Fatalf("generation after an update: %d (was %d), %v", second.Generation, first.Generation, err)
	}

	// The replay: refused by the Store that saw the newer generation.
	if _, err := admin.Put(ctx, "alerts", captured.Value()); err != nil {
		t.Fatal(err)
	}
	_, _, err = svc.Get(ctx, "alerts")
	if !errors.Is(err, ErrReplayed) || !errors.Is(err, ErrOpen) {
		t.Fatalf("replayed record: %v, want ErrReplayed (and ErrOpen)", err)
	}
	// A stale read (an older revision, as a lagging replica answers) is
	// not a replay.
	if err := svc.admit("alerts", first.Generation, rev); err != nil {
		t.Fatalf("stale read refused: %v", err)
	}

	// The remedy, a consent by another process, is accepted.
	rec.AccessToken = "AT-SECRET-consented-again"
	if _, err := tool.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, _, err := svc.Get(ctx, "alerts"); err != nil || got.AccessToken != rec.AccessToken {
		t.Fatalf("new consent after a replay: %v %v", got, err)
	}

	// Deleted and consented again while the service did not look.
	if err := tool.Delete(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	rec.AccessToken = "AT-SECRET-after-delete"
	if _, err := tool.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, _, err := svc.Get(ctx, "alerts"); err != nil || got.AccessToken != rec.AccessToken {
		t.Fatalf("new consent after a deletion: %v %v", got, err)
	}

	// A record of an earlier version (no generation), written by a
	// replica not yet upgraded, is accepted.
	legacy, err := tool.encode(Record{Account: "alerts", AccessToken: "AT-SECRET-legacy", State: StateHealthy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "alerts", legacy); err != nil {
		t.Fatal(err)
	}
	if got, _, err := svc.Get(ctx, "alerts"); err != nil || got.AccessToken != "AT-SECRET-legacy" {
		t.Fatalf("record of an earlier version: %v %v", got, err)
	}
}

// TestStoreRefusesAReplayAfterADeletion: the NATS administrator deletes
// an account's record, waits for the token services to notice (a
// token.get answers "not found", or their watch delivers the deletion),
// then writes back a sealed value captured earlier. The deletion must not
// wipe the memory of the newer generation: a new consent after a deletion
// is stored above the bucket's last revision (Put's floor), so it needs no
// reset, and a replay behind a deletion is still a replay.
func TestStoreRefusesAReplayAfterADeletion(t *testing.T) {
	r := startReplay(t)
	ctx, svc, tool, admin, rec, captured := r.ctx, r.svc, r.tool, r.admin, r.rec, r.captured

	for _, del := range []struct {
		name string
		do   func() error
	}{
		{"delete", func() error { return admin.Delete(ctx, "alerts") }},
		{"purge", func() error { return admin.Purge(ctx, "alerts") }},
	} {
		if err := del.do(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := svc.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: record after the deletion: %v, want ErrNotFound", del.name, err)
		}
		if _, err := admin.Put(ctx, "alerts", captured.Value()); err != nil {
			t.Fatal(err)
		}
		if got, _, err := svc.Get(ctx, "alerts"); !errors.Is(err, ErrReplayed) {
			t.Fatalf("%s, then the captured value written back: %q %v, want ErrReplayed", del.name, got.AccessToken, err)
		}
	}

	// The remedy after a deletion, a new consent, is still accepted.
	if err := admin.Delete(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	rec.AccessToken = "AT-SECRET-after-delete"
	if _, err := tool.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if got, _, err := svc.Get(ctx, "alerts"); err != nil || got.AccessToken != rec.AccessToken {
		t.Fatalf("new consent after a deletion: %v %v", got.AccessToken, err)
	}
}

// replay is the start of an admin's replay: authtool (tool) stored
// alerts' record (rec), the admin captured its sealed value, and the
// token service (svc) read it (first, at rev) and wrote a refreshed one
// over it.
type replay struct {
	ctx        context.Context
	svc, tool  *Store
	admin      jetstream.KeyValue
	rec, first Record
	captured   jetstream.KeyValueEntry
	rev        uint64
}

func startReplay(t *testing.T) replay {
	t.Helper()
	ctx := testCtx(t)
	url := startServer(t)
	kr := testKeyring(t, "k1")
	r := replay{ctx: ctx, rec: secretRecord("alerts")}
	r.svc = openTestStore(t, connectJetStream(t, url), kr)  // a token service
	r.tool = openTestStore(t, connectJetStream(t, url), kr) // authtool
	var err error
	if r.admin, err = connectJetStream(t, url).KeyValue(ctx, Bucket); err != nil { // no key, every bucket
		t.Fatal(err)
	}
	if _, err := r.tool.Put(ctx, r.rec); err != nil {
		t.Fatal(err)
	}
	if r.captured, err = r.admin.Get(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if r.first, r.rev, err = r.svc.Get(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	next := r.first
	next.AccessToken = "AT-SECRET-refreshed"
	if _, err := r.svc.Update(ctx, next, r.rev); err != nil {
		t.Fatal(err)
	}
	return r
}
