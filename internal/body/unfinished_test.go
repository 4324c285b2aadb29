package body_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// cancelAfter is a producer's content whose context ends after the
// first n octets were read (the caller gave up mid-store: a deadline, a
// shutdown); the content itself goes on.
type cancelAfter struct {
	n, read int
	cancel  func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
		if (c.read+i)%76 == 75 {
			p[i] = '\n'
		}
	}
	c.read += len(p)
	if c.read >= c.n {
		c.cancel()
	}
	return len(p), nil
}

// TestSweepDeletesChunksOfAnUnfinishedPut: a producer whose context ends
// while it stores a large body (producer.Publish with a deadline, relay
// sendmail's --timeout) has published chunks but no metadata, and may
// not purge them (the producer role may store, never purge: roles). The
// same is left by a process killed between two chunks. Nothing names
// those chunks, and no object lists them: the sweeper must still delete
// them once older than the orphan age, or they stay for ever
// (docs/design.md §3.5, "Orphans").
func TestSweepDeletesChunksOfAnUnfinishedPut(t *testing.T) {
	rs := queuetest.StartRoles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := map[roles.Role]jetstream.JetStream{}
	ncs := map[roles.Role]*nats.Conn{}
	for _, r := range []roles.Role{roles.Admin, roles.Worker, roles.Producer} {
		ncs[r], js[r] = rs.As(t, r)
	}
	if err := queue.EnsureStreams(ctx, js[roles.Admin], queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}

	// A body stored whole and queued: the sweep must keep it.
	ps := body.OpenStoreOnly(js[roles.Producer])
	kept, err := ps.Put(ctx, io.LimitReader(&cancelAfter{n: 1 << 30, cancel: func() {}}, 3*body.ChunkSize), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: "kept", Account: "alerts", To: []string{"ops@contoso.com"}, Body: &kept}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(ctx, js[roles.Producer], "alerts", m.ID, data); err != nil {
		t.Fatal(err)
	}

	// The producer's context ends after two chunks' worth.
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	_, err = ps.Put(pctx, &cancelAfter{n: 2 * body.ChunkSize, cancel: pcancel}, message.MaxSize)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with its context cancelled midway: %v, want context.Canceled", err)
	}
	// It asked for nothing its role may not do: a purge (or the reads of
	// a delete) would be refused with only an asynchronous permissions
	// error, which the server sends before it answers the flush.
	if err := ncs[roles.Producer].Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ncs[roles.Producer].LastError(); err != nil {
		t.Fatalf("the failed Put asked for what the producer role may not do: %v", err)
	}
	chunks := func() uint64 {
		t.Helper()
		st, err := js[roles.Admin].Stream(ctx, body.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter("$O."+body.Bucket+".C.>"))
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		return n
	}
	left := chunks()
	if left <= uint64(kept.Size/body.ChunkSize) {
		t.Fatalf("%d chunks in the bucket: the cancelled Put left none to test with", left)
	}

	ws, err := body.Open(ctx, js[roles.Worker])
	if err != nil {
		t.Fatal(err)
	}
	// Young: kept, as a Put may still be going on.
	if _, err := ws.Sweep(ctx, js[roles.Worker], time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := chunks(); n != left {
		t.Fatalf("a young sweep left %d chunks of %d", n, left)
	}
	// Past the orphan age: gone; the queued body is whole.
	if _, err := ws.Sweep(ctx, js[roles.Worker], time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, want := chunks(), uint64((kept.Size+body.ChunkSize-1)/body.ChunkSize); n != want {
		t.Fatalf("%d chunks in the bucket after the sweep, want the %d of the queued body (the unfinished Put's chunks are never swept)", n, want)
	}
	rc, err := ws.Open(ctx, kept)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if n, err := io.Copy(io.Discard, rc); err != nil || n != kept.Size {
		t.Fatalf("the queued body after the sweep: %d bytes, %v", n, err)
	}
}
