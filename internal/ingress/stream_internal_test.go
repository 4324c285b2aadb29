package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"relay365/internal/body"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// streamSession is benchSession's session with a real JetStream (MAIL
// and the body store) behind it, and a function that says how many
// octets the body store's stream holds.
func streamSession(t testing.TB) (*session, string, func() int64) {
	t.Helper()
	env := queuetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	ss, from := benchSession(1)
	ss.s.deps.JS = env.JS
	ss.s.cfg.defaults()
	stored := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := env.JS.Stream(ctx, body.StreamName)
		if err != nil {
			return 0
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0
		}
		return int64(info.State.Bytes)
	}
	return ss, from, stored
}

// meteredMail is a message of size octets, made as it is read, that
// holds its reader to a bound: before handing over more, it waits until
// the body store holds all but bound of what it handed over (the store's
// octets count chunk headers too, so this errs toward holding less).
// A session that read the message whole before storing it would never
// get past the bound: Read fails at the deadline instead. held is the
// most it saw handed over and not yet stored (the store is asked every
// 256 KiB, so held errs up by as much).
type meteredMail struct {
	head     []byte
	size     int64
	pos      int64
	bound    int64
	base     int64 // the store's octets before
	stored   func() int64
	seen     int64 // the store's octets when last asked
	asked    int64 // pos then
	held     int64
	deadline time.Time
}

func newMeteredMail(from string, size, bound int64, stored func() int64) *meteredMail {
	head := fmt.Appendf(nil, "From: <%s>\r\nTo: ops@fabrikam.com\r\nSubject: metered\r\nDate: Sat, 05 Dec 2026 09:30:00 +0000\r\n\r\n", from)
	var base int64
	if stored != nil {
		base = stored()
	}
	return &meteredMail{head: head, size: size, bound: bound, base: base, seen: base, stored: stored, deadline: time.Now().Add(2 * time.Minute)}
}

var meteredLine = []byte("The quick brown fox jumps over the lazy dog; pack my box with jugs. 0123\r\n")

func (g *meteredMail) Read(p []byte) (int, error) {
	if g.pos >= g.size {
		return 0, io.EOF
	}
	if g.stored == nil { // not metered
	} else if g.pos-g.asked >= 256<<10 { // the store's count, fresh every 256 KiB
		g.seen, g.asked = g.stored(), g.pos
	}
	if g.stored != nil && g.pos-(g.seen-g.base) > g.bound {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for g.seen = g.stored(); g.pos-(g.seen-g.base) > g.bound; g.seen = g.stored() {
			if time.Now().After(g.deadline) {
				return 0, fmt.Errorf("the session held %d octets of DATA unstored, over the bound of %d", g.pos-(g.seen-g.base), g.bound)
			}
			<-tick.C
		}
	}
	n := 0
	for n < len(p) && g.pos < g.size {
		var c byte
		if g.pos < int64(len(g.head)) {
			c = g.head[g.pos]
		} else {
			c = meteredLine[(g.pos-int64(len(g.head)))%int64(len(meteredLine))]
		}
		p[n] = c
		n++
		g.pos++
	}
	g.held = max(g.held, g.pos-(g.seen-g.base))
	return n, nil
}

// streamBound is what a session may hold of a streamed DATA: its buffer,
// and the pieces in flight between DATA and the store (the CRLF writer's
// 64 KiB, a 256 KiB object chunk, the copy's buffers), with room.
const streamBound = 2 << 20

// TestStreamedDataHoldsABoundedPart: a 20 MB DATA is queued while the
// session never has more than streamBound of it handed over and not yet
// in the body store: the memory a message costs is bounded by the
// buffer, not its size. (An assertion on the octets read and stored, not
// on the heap, which the embedded NATS server in this process shares.)
func TestStreamedDataHoldsABoundedPart(t *testing.T) {
	ss, from, stored := streamSession(t)
	envelope(t, ss, from)
	g := newMeteredMail(from, 20<<20, streamBound, stored)
	if err := ss.data("client.example.org", g); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if got := stored() - g.base; got < g.size {
		t.Fatalf("the body store holds %d octets of a %d-octet message", got, g.size)
	}
	t.Logf("%d octets streamed; at most %d handed over and not yet stored", g.size, g.held)
}

// hangUp reads r until n octets, then fails as go-smtp's DATA reader does
// when the client closes the connection before the final ".".
type hangUp struct {
	r io.Reader
	n int64
}

func (h *hangUp) Read(p []byte) (int, error) {
	if h.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	m, err := h.r.Read(p[:min(int64(len(p)), h.n)])
	h.n -= int64(m)
	return m, err
}

// TestStreamedDataCutOffIsNotQueued: a client that hangs up inside a
// large DATA gets nothing queued, and no part of its body stays in the
// store (a store that took io.ErrUnexpectedEOF for the end once queued
// the part that came).
func TestStreamedDataCutOffIsNotQueued(t *testing.T) {
	ss, from, stored := streamSession(t)
	envelope(t, ss, from)
	err := ss.data("client.example.org", &hangUp{r: newMeteredMail(from, 4<<20, 0, nil), n: 2<<20 + 1000})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("DATA cut off: %v, want the client's io.ErrUnexpectedEOF", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mail, err := ss.s.deps.JS.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := mail.Info(ctx)
	if err != nil || info.State.Msgs != 0 {
		t.Fatalf("MAIL holds %d messages after a cut-off DATA (%v), want none", info.State.Msgs, err)
	}
	if got := stored(); got != 0 {
		t.Fatalf("the body store holds %d octets after a cut-off DATA, want none", got)
	}
}

// BenchmarkStreamedSubmission is the front door's work for one 8 MB
// message past the buffer: DATA read, the header section checked, the
// content streamed into the body store of a real JetStream, the MAIL
// message published. The message is made as it is read, unmetered (the
// bound is TestStreamedDataHoldsABoundedPart's, which logs what a session
// held); B/op counts the embedded NATS server's allocations too, which
// share this process.
func BenchmarkStreamedSubmission(b *testing.B) {
	ss, from, _ := streamSession(b)
	ctx := context.Background()
	store, err := body.Open(ctx, ss.s.deps.JS)
	if err != nil {
		b.Fatal(err)
	}
	const size = 8 << 20
	b.ReportAllocs()
	b.SetBytes(size)
	for b.Loop() {
		envelope(b, ss, from)
		if err := ss.data("client.example.org", newMeteredMail(from, size, 0, nil)); err != nil {
			b.Fatal(err)
		}
		ss.Reset() // as go-smtp does after DATA
		b.StopTimer()
		names, err := store.Names(ctx, time.Now().Add(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range names {
			if err := store.Delete(ctx, n); err != nil {
				b.Fatal(err)
			}
		}
		if s, err := ss.s.deps.JS.Stream(ctx, queue.StreamMail); err == nil {
			_ = s.Purge(ctx)
		}
		b.StartTimer()
	}
}

// TestReadUpTo: a small DATA costs a small buffer; one longer than the
// buffer fills it exactly and leaves the rest unread.
func TestReadUpTo(t *testing.T) {
	small := benchRaw("a@contoso.com", 2048)
	buf, full, err := readUpTo(bytes.NewReader(small), streamBuffer)
	if err != nil || full || !bytes.Equal(buf, small) || cap(buf) > 16<<10 {
		t.Fatalf("2 KB: %d octets, full %v, cap %d, %v", len(buf), full, cap(buf), err)
	}
	big := benchRaw("a@contoso.com", streamBuffer+100)
	r := bytes.NewReader(big)
	buf, full, err = readUpTo(r, streamBuffer)
	if err != nil || !full || !bytes.Equal(buf, big[:streamBuffer]) || r.Len() != len(big)-streamBuffer {
		t.Fatalf("past the buffer: %d octets, full %v, %d left, %v", len(buf), full, r.Len(), err)
	}
}
