package body_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/body/bodytest"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// startStore starts a JetStream server with the relay's streams and opens
// the body store on it.
func startStore(tb testing.TB) (*queuetest.Env, context.Context, *body.Store) {
	tb.Helper()
	env, ctx := queuetest.StartMail(tb)
	s, err := body.Open(ctx, env.JS)
	if err != nil {
		tb.Fatal(err)
	}
	return env, ctx, s
}

// objectInfo is the body store's record of the body ref names.
func objectInfo(t *testing.T, ctx context.Context, env *queuetest.Env, ref message.BodyRef) *jetstream.ObjectInfo {
	t.Helper()
	obs, err := env.JS.ObjectStore(ctx, body.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, ref.Object)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// bigRaw is a raw message of about n octets, base64 lines of 76.
func bigRaw(t *testing.T, n int) []byte {
	t.Helper()
	bin := make([]byte, n*3/4)
	if _, err := rand.Read(bin); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(bin)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.Bytes()
}

func TestPutOpenRoundTrip(t *testing.T) {
	_, ctx, s := startStore(t)
	raw := bigRaw(t, 3<<20)
	ref, err := s.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if ref.Size != int64(len(raw)) || !strings.HasPrefix(ref.Digest, "SHA-256=") || ref.EightBit {
		t.Fatalf("ref = %+v", ref)
	}
	m := &message.Message{Account: "alerts", To: []string{"b@contoso.com"}, Body: &ref}
	if err := m.Validate(); err != nil {
		t.Fatalf("a message naming the body does not validate: %v", err)
	}
	for range 2 { // a retry reads it afresh
		readBack(t, s, ref, raw)
	}
}

// readBack reads the body ref names and checks it is raw.
func readBack(t *testing.T, s *body.Store, ref message.BodyRef, raw []byte) {
	t.Helper()
	rc, err := s.Open(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("read back %d bytes (err %v), want the %d stored", len(got), err, len(raw))
	}
}

// smallReads hands out at most n octets a Read, as a DATA reader does.
type smallReads struct {
	r io.Reader
	n int
}

func (s smallReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

// TestPutStoresFullChunks: however the producer's reads come, a body is
// stored in chunks of ChunkSize, each a message with its own store write
// (before, a chunk was whatever one read returned: 32 KiB or less).
func TestPutStoresFullChunks(t *testing.T) {
	env, ctx, s := startStore(t)
	raw := bigRaw(t, 2<<20)
	ref, err := s.Put(ctx, smallReads{bytes.NewReader(raw), 1000}, message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	info := objectInfo(t, ctx, env, ref)
	if want := (len(raw) + body.ChunkSize - 1) / body.ChunkSize; int(info.Chunks) != want {
		t.Fatalf("%d octets stored in %d chunks, want %d of %d", len(raw), info.Chunks, want, body.ChunkSize)
	}
	readBack(t, s, ref, raw)
}

// cutOff returns its first n octets, then err: a client gone inside DATA.
type cutOff struct {
	r   io.Reader
	n   int
	err error
}

func (c *cutOff) Read(p []byte) (int, error) {
	if c.n == 0 {
		return 0, c.err
	}
	m, err := c.r.Read(p[:min(len(p), c.n)])
	c.n -= m
	return m, err
}

// TestPutFailsOnAReaderCutOff: a body whose reader fails before its end
// is not stored, whatever the failure, even io.ErrUnexpectedEOF (what
// go-smtp's DATA reader says when the client hangs up before the final
// "."), and even when the cut falls inside a chunk: a message cut short
// must never be queued.
func TestPutFailsOnAReaderCutOff(t *testing.T) {
	_, ctx, s := startStore(t)
	raw := bigRaw(t, 1<<20)
	for _, cut := range []error{io.ErrUnexpectedEOF, errors.New("connection reset")} {
		for _, n := range []int{body.ChunkSize, body.ChunkSize + 1000} {
			ref, err := s.Put(ctx, &cutOff{r: bytes.NewReader(raw), n: n, err: cut}, message.MaxSize)
			if !errors.Is(err, cut) {
				t.Fatalf("cut after %d octets with %v: ref %+v, error %v; want the reader's error", n, cut, ref, err)
			}
		}
	}
	names, err := s.Names(ctx, time.Now().Add(time.Hour))
	if err != nil || len(names) != 0 {
		t.Fatalf("bodies left: %v (%v), want none", names, err)
	}
}

func TestPutNormalizesAndRefuses(t *testing.T) {
	_, ctx, s := startStore(t)
	ref, err := s.Put(ctx, strings.NewReader("Subject: x\n\nline\rr\xc3\xa9\n"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := s.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if want := "Subject: x\r\n\r\nline\r\nr\xc3\xa9\r\n"; string(got) != want || !ref.EightBit {
		t.Errorf("stored %q (8bit %v), want %q with 8bit", got, ref.EightBit, want)
	}

	_, err = s.Put(ctx, bytes.NewReader(bigRaw(t, 2<<20)), 1<<20)
	var tl *body.TooLarge
	if !errors.As(err, &tl) || tl.Limit != 1<<20 || !strings.Contains(err.Error(), "over the size limit of 1048576 bytes") {
		t.Fatalf("oversized: %v, want a *TooLarge naming the limit", err)
	}
	_, err = s.Put(ctx, strings.NewReader("Subject: x\r\n\r\nnul\x00\r\n"), 1000)
	if !message.IsInvalid(err) {
		t.Fatalf("NUL: %v, want Invalid", err)
	}
	_, err = s.Put(ctx, strings.NewReader("Subject: x\r\n\r\n"+strings.Repeat("x", 999)+"\r\n"), 5000)
	if !message.IsInvalid(err) || !strings.Contains(err.Error(), "998") {
		t.Fatalf("long body line: %v, want Invalid naming 998", err)
	}
	// Nothing of the refused ones stays behind.
	names, err := s.Names(ctx, time.Now().Add(time.Hour))
	if err != nil || len(names) != 1 || names[0] != ref.Object {
		t.Fatalf("bodies left: %v (%v), want only %s", names, err, ref.Object)
	}
}

// A body replaced under its name (a rewritten object) is never sent as
// the message: Open refuses it as Invalid, so the message is dead-lettered.
func TestOpenRefusesAReplacedBody(t *testing.T) {
	env, ctx, s := startStore(t)
	ref, err := s.Put(ctx, strings.NewReader("Subject: x\r\n\r\nthe real one\r\n"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := bodytest.Replace(ctx, env.JS, ref.Object, []byte("Subject: x\r\n\r\na forgery!!!\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, ref); !message.IsInvalid(err) {
		t.Fatalf("replaced body: %v, want Invalid", err)
	}
	if err := s.Delete(ctx, ref.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, ref); !message.IsInvalid(err) || !strings.Contains(err.Error(), "not in relay_bodies") {
		t.Fatalf("deleted body: %v, want Invalid", err)
	}
	if err := s.Delete(ctx, ref.Object); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
}

// A body with a chunk gone from the store (its record, size and digest
// untouched) is refused at Open: a reader would otherwise wait for the
// chunk for ever, and the message's heartbeat would keep it from ever
// being delivered again.
func TestOpenRefusesABodyMissingAChunk(t *testing.T) {
	env, ctx, s := startStore(t)
	ref, err := s.Put(ctx, bytes.NewReader(bigRaw(t, 3*body.ChunkSize)), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	info := objectInfo(t, ctx, env, ref)
	if info.Chunks < 3 {
		t.Fatalf("%d chunks, want at least 3", info.Chunks)
	}
	st, err := env.JS.Stream(ctx, body.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(ctx, "$O."+body.Bucket+".C."+info.NUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, last.Sequence-1); err != nil { // one in the middle
		t.Fatal(err)
	}
	r, err := s.Open(ctx, ref)
	if err == nil {
		r.Close()
	}
	if !message.IsInvalid(err) || !strings.Contains(err.Error(), "chunks") {
		t.Fatalf("body missing a chunk: %v, want Invalid naming the chunks", err)
	}
}

// Sweep deletes what nothing names and keeps what a queued message or a
// dead letter names, however old.
func TestSweepDeletesOnlyOrphans(t *testing.T) {
	env, ctx, s := startStore(t)
	put := func() message.BodyRef {
		ref, err := s.Put(ctx, strings.NewReader("Subject: x\r\n\r\nbody\r\n"), 1000)
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	queued, dead, orphan := put(), put(), put()
	publish := func(ref message.BodyRef) []byte {
		m := &message.Message{Account: "alerts", To: []string{"b@contoso.com"}, Body: &ref}
		if err := m.Validate(); err != nil {
			t.Fatal(err)
		}
		data, _ := m.Encode()
		return data
	}
	if _, err := queue.Publish(ctx, env.JS, "alerts", "m1", publish(queued)); err != nil {
		t.Fatal(err)
	}
	env.DeadLetter(t, ctx, "other", "m2", publish(dead), queue.DeadLetter{Reason: "test"})

	// Young bodies are never swept, named or not.
	if n, err := s.Sweep(ctx, env.JS, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("young sweep deleted %d (%v)", n, err)
	}
	n, err := s.Sweep(ctx, env.JS, time.Now().Add(time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("sweep deleted %d (%v), want the one orphan", n, err)
	}
	if _, err := s.Open(ctx, orphan); !message.IsInvalid(err) {
		t.Errorf("the orphan is still there: %v", err)
	}
	for _, ref := range []message.BodyRef{queued, dead} {
		rc, err := s.Open(ctx, ref)
		if err != nil {
			t.Fatalf("a named body was swept: %v", err)
		}
		rc.Close()
	}
}

// TestBodiesAreStoredInSmallBlocks: the body stream is made so that
// nats-server stores it in blocks of at most 4 MiB (not its default 8 MiB
// for a stream without limits), because the server holds a block being
// written or read in memory whole (queue.BodyMaxChunksPerObject). The
// block files on disk show the size it chose. A bucket made by an earlier
// version, with nats.go's CreateObjectStore, gets the chunk limit when the
// streams are ensured.
func TestBodiesAreStoredInSmallBlocks(t *testing.T) {
	env := queuetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: body.Bucket, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	st, err := env.JS.Stream(ctx, body.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxMsgsPerSubject; got != queue.BodyMaxChunksPerObject {
		t.Fatalf("an earlier version's bucket: MaxMsgsPerSubject %d after EnsureStreams, want %d", got, queue.BodyMaxChunksPerObject)
	}

	fresh, ctx := queuetest.StartMail(t)
	s, err := body.Open(ctx, fresh.JS)
	if err != nil {
		t.Fatal(err)
	}
	raw := bigRaw(t, 12<<20)
	ref, err := s.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := filepath.Glob(filepath.Join(fresh.Server.StoreDir(), "*", "streams", body.StreamName, "msgs", "*.blk"))
	if err != nil || len(blocks) < 3 {
		t.Fatalf("%d block files for a %d-octet body (err %v): want at least 3 of at most 4 MiB", len(blocks), len(raw), err)
	}
	for _, b := range blocks {
		fi, err := os.Stat(b)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 4<<20+200<<10 { // a block ends with the record that crossed 4 MiB
			t.Errorf("block %s is %d octets: the server chose blocks larger than 4 MiB", filepath.Base(b), fi.Size())
		}
	}
	rc, err := s.Open(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("read back %d octets (err %v), want the %d stored", len(got), err, len(raw))
	}
}

// TestCancelledPutReturnsPromptly: a Put whose caller gives up (a
// cancelled producer.Publish, relay dlq replay's --timeout) returns once
// its context has ended, as producer.Publish promises, even when its
// chunks in flight get no answer. It waited for them (failWait, 10 s)
// and for the delete of what it wrote (10 s more) whatever the context;
// that clean-up now runs detached. The store's chunks are held at a
// proxy, unanswered, and the clean-up's wait made an hour: a Put that
// waits on it never returns before the test's deadline.
func TestCancelledPutReturnsPromptly(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	proxy := queuetest.StartHoldProxy(t, env.URL, "$O."+body.Bucket+".C.")
	s, err := body.Open(ctx, queuetest.Connect(t, proxy.URL))
	if err != nil {
		t.Fatal(err)
	}
	body.SetFailWait(s, time.Hour)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	raw := bigRaw(t, 300<<10) // two chunks: what the client writes the socket buffers hold
	go func() {
		_, err := s.Put(pctx, bytes.NewReader(raw), message.MaxSize)
		done <- err
	}()
	select {
	case <-proxy.Held:
	case err := <-done:
		t.Fatalf("Put ended (%v) before the proxy held its chunks", err)
	case <-ctx.Done():
		t.Fatal("the proxy never held the chunks")
	}
	cancel()
	// Much shorter than the clean-up's hour, ample for a Put that returns.
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Put: %v, want context.Canceled", err)
		}
	case <-wctx.Done():
		t.Fatal("cancelled Put did not return: it waits out its clean-up")
	}
}
