// Package body keeps the content of large messages in a JetStream Object
// Store bucket, relay_bodies, so that a message of up to Office 365's
// 35 MB can be queued at all (a NATS message is 1 MiB by default) and
// sent without holding it in memory (docs/design.md §3.5).
//
// # Order of writes, and what a crash leaves
//
// A producer stores the body first (Put: chunks, then the object's
// metadata with its size and SHA-256 digest), then publishes the MAIL
// message that names it (message.BodyRef). The worker reads it in chunks
// into SMTP DATA, checking size and digest before the content's end is
// sent, and deletes it only after the MAIL message is acked. A dead letter
// keeps the body (its copy names the same object); `relay dlq replay`
// queues a copy naming a copy of the body (Copy), `relay dlq purge`
// deletes the bodies of the dead letters it purges (DeleteUnnamed).
//
// A crash between the two writes of a producer leaves a body no message
// names; one between the worker's ack and its delete leaves a body whose
// message is gone. Sweep removes both: a body older than the orphan age
// that no message in MAIL or MAIL_DLQ names. A Put that stops between
// its chunks and its metadata (a producer's context ended: it may not
// purge; a crash) leaves chunks no object lists; Sweep purges those too
// once their last chunk is older than the orphan age. The orphan age (relay serve
// --body-orphan-age, default OrphanAge) is never shorter than MAIL's
// duplicate window (queue.DuplicatesFor), because a producer that retries
// its publish does so within it: a body swept sooner could go before its
// message arrives. Nothing is ever deleted that a message in either
// stream names, so no crash loses mail, and no orphan stays longer than
// the orphan age plus one sweep interval (--body-sweep-every). The crash
// tests in internal/daemon kill relay serve inside both windows
// (internal/crashpoint).
//
// # Limits
//
// Put counts the octets it stores and stops with a *TooLarge past the
// limit, so a producer learns of an oversized message at once (SMTP 552,
// exit 1) and never through a dead letter.
package body

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/message"
	"relay365/internal/queue"
)

// Bucket is the Object Store bucket of message bodies; its stream is
// StreamName.
const (
	Bucket     = queue.BodyBucket // made by queue.EnsureStreams
	StreamName = "OBJ_" + Bucket
)

// Store reads and writes bodies.
type Store struct {
	js     jetstream.JetStream
	obs    jetstream.ObjectStore
	stream jetstream.Stream
	// storeOnly: the caller's role may store bodies but not remove them
	// (OpenStoreOnly).
	storeOnly bool
	// failWait, when not 0, replaces failWait (tests).
	failWait time.Duration
}

// Open opens the bucket, which relay serve (or relay setup) creates.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	obs, err := js.ObjectStore(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w (is relay serve running, or relay setup done?)", Bucket, err)
	}
	st, err := js.Stream(ctx, StreamName)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", Bucket, err)
	}
	return &Store{js: js, obs: obs, stream: st}, nil
}

// OpenStoreOnly readies the bucket for a role that may store bodies but
// never remove one: the producer role (SECURITY.md). A Put that fails
// then leaves what it stored to the sweep (Sweep, the orphan age) instead
// of asking for a purge: the server refuses that request without an
// answer (only an asynchronous permissions error), so the caller waited
// out the request's whole timeout before it learned of the failure.
//
// It asks the server nothing: the body stream's info is not the
// producer's to read. A stream info request may ask for the stream's
// subjects (subjects_filter), and a metadata subject is a body's name:
// knowing one, a producer could publish a deletion marker as that
// body's metadata and destroy another's mail
// (TestProducerCannotFindAndDeleteAnotherBody). A bucket that is not there shows in
// Put instead: its chunks get no answer from a stream
// (jetstream.ErrNoStreamResponse, which Put's error wraps).
func OpenStoreOnly(js jetstream.JetStream) *Store {
	return &Store{js: js, storeOnly: true}
}

// TooLarge is a message over the size limit (message.TooLarge).
type TooLarge = message.TooLarge

// NewName returns a fresh object name ("b-" and 32 hex digits).
func NewName() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "b-" + hex.EncodeToString(b[:])
}

// Put stores the raw message read from r, its line endings made CRLF and
// checked as message.CRLFWriter does, under a new name, and returns its
// reference. Past limit octets it stops with a *TooLarge; on any error
// what was stored is deleted. It has stopped reading r when it returns.
func (s *Store) Put(ctx context.Context, r io.Reader, limit int64) (message.BodyRef, error) {
	name := NewName()
	pr, pw := io.Pipe()
	cw := message.NewCRLFWriter(&limitWriter{w: pw, limit: limit})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, err := io.Copy(cw, r)
		if err == nil {
			err = cw.Close()
		}
		pw.CloseWithError(err)
	}()
	info, err := s.put(ctx, name, fullChunks{pr})
	pr.CloseWithError(errors.New("stopped")) // ends the copy when Put stopped early
	// Put returns only once it has stopped reading r, so its caller may
	// read on (the SMTP front door drains a refused DATA to its end).
	<-copied
	if err != nil {
		// put deletes its chunks when the reader fails; a failure after
		// the chunks (the metadata write) may leave them: gone too,
		// unless the caller may not remove bodies (OpenStoreOnly).
		if !s.storeOnly {
			s.deleteFailed(ctx, name)
		}
		var tl *TooLarge
		var inv *message.Invalid
		switch {
		case errors.As(err, &tl):
			return message.BodyRef{}, tl
		case errors.As(err, &inv):
			return message.BodyRef{}, inv
		}
		return message.BodyRef{}, fmt.Errorf("store the body in %s: %w", Bucket, err)
	}
	if info.Size == 0 {
		if !s.storeOnly {
			_ = s.Delete(ctx, name)
		}
		return message.BodyRef{}, &message.Invalid{Field: "body", Reason: "the message is empty"}
	}
	return message.BodyRef{Object: name, Size: int64(info.Size), Digest: info.Digest, EightBit: cw.EightBit}, nil
}

// StoreMessage stores the raw message read from r (Put) as env's body and
// returns the JSON of the message that names it: env's id, account and
// envelope, with the reference.
func (s *Store) StoreMessage(ctx context.Context, env *message.Message, r io.Reader, limit int64) ([]byte, error) {
	ref, err := s.Put(ctx, r, limit)
	if err != nil {
		return nil, err
	}
	m := &message.Message{ID: env.ID, Account: env.Account, To: env.To, Cc: env.Cc, Bcc: env.Bcc, Body: &ref}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m.Encode()
}

// Copy stores the body ref names again under a new name and returns the
// reference to it: same size, digest and 8-bit flag, read and checked as
// the worker reads it (Open), written as Put writes. relay dlq replay
// queues a copy that names a body of its own: the dead letter's body is
// in the list of what a relay dlq purge deletes, and a purge between the
// replay's read of the dead letter and its publish would otherwise delete
// the body the queued copy names (TestDLQReplayRacingPurgeKeepsTheBody).
// A body gone or changed is a *message.Invalid, as for Open; on any error
// nothing of the copy is left.
func (s *Store) Copy(ctx context.Context, ref message.BodyRef) (message.BodyRef, error) {
	rc, err := s.Open(ctx, ref)
	if err != nil {
		return message.BodyRef{}, err
	}
	defer rc.Close()
	name := NewName()
	if _, err := s.put(ctx, name, fullChunks{rc}); err != nil {
		// put purges its chunks; a failure at the metadata may leave it.
		s.deleteFailed(ctx, name)
		var inv *message.Invalid
		if errors.As(err, &inv) {
			return message.BodyRef{}, inv
		}
		return message.BodyRef{}, fmt.Errorf("copy body %s: %w", ref.Object, err)
	}
	out := ref
	out.Object = name
	return out, nil
}

// ChunkSize is the size of a body's chunks, each a message of the
// bucket's stream with its own store write and its own delivery to the
// reader: 256 KiB, where nats.go's default is 128 KiB. For 30 MB bodies
// half the chunks took relay serve's CPU per message down by about a
// tenth; 512 KiB and 1 MiB saved little more and held more in memory (a
// reader buffers readAhead of them; BENCHMARKS.md, "Large messages").
// Bodies stored with other sizes read the same.
const ChunkSize = 256 << 10

// fullChunks fills each Read's buffer before it returns. ObjectStore.Put
// stores what one Read returns as one chunk, and a pipe's Read returns
// one Write: without it a body copied 32 KiB at a time (io.Copy) was
// stored in chunks of 32 KiB, each with its own store write, and one
// from a DATA reader in smaller ones still. The reader's error is passed
// on as it is: only io.EOF ends a body, and an io.ErrUnexpectedEOF (a
// client that hung up inside DATA) must fail Put, not store what came.
type fullChunks struct{ r io.Reader }

func (f fullChunks) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := f.r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// limitWriter fails with a *TooLarge past limit octets.
type limitWriter struct {
	w     io.Writer
	n     int64
	limit int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+int64(len(p)) > l.limit {
		return 0, &TooLarge{Size: l.limit + 1, Limit: l.limit, AtLeast: true}
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// Open returns a reader of the body ref names, from its start. The body
// must be the one the reference was made for: a missing object, or one
// whose size or digest differ, is a *message.Invalid (the message can
// never be sent as it was handed over: a dead letter); the reader's own
// digest check at the end is one too. Other errors (the store did not
// answer) are temporary.
func (s *Store) Open(ctx context.Context, ref message.BodyRef) (io.ReadCloser, error) {
	info, err := s.info(ctx, ref)
	if err != nil {
		return nil, err
	}
	// The chunks are pulled a few at a time by an ordered consumer of
	// their own subject, not pushed (nats.go's ObjectStore.Get lets the
	// server push up to the subscription's 64 MB pending limit): a
	// reader slower than the store, as SMTP is, holds at most
	// readAhead chunks.
	cons, err := s.js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{fmt.Sprintf("$O.%s.C.%s", Bucket, info.NUID)},
	})
	if err != nil {
		return nil, fmt.Errorf("read body %s: %w", ref.Object, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(readAhead))
	if err != nil {
		return nil, fmt.Errorf("read body %s: %w", ref.Object, err)
	}
	// A chunk gone from the store would leave the reader waiting for it
	// for ever (and the message's heartbeat keeping it from redelivery):
	// the consumer counts the chunks there are when it starts.
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending < uint64(info.Chunks) {
		it.Stop()
		return nil, &message.Invalid{Field: "body", Reason: fmt.Sprintf("object %s has %d of its %d chunks in %s: changed since it was queued", ref.Object, ci.NumPending, info.Chunks, Bucket)}
	}
	stop := context.AfterFunc(ctx, it.Stop)
	return &chunkReader{it: it, stop: stop, ctx: ctx, store: s, ref: ref, left: ref.Size, h: sha256.New()}, nil
}

// Check says whether the body ref names is in the store as the message
// was queued with it, without reading it: nil if so, a *message.Invalid
// (as Open's) when it is gone or changed, which a replay refuses; another
// error when the store did not answer. relay dlq show says so.
func (s *Store) Check(ctx context.Context, ref message.BodyRef) error {
	_, err := s.info(ctx, ref)
	return err
}

// info is the object ref names, checked against ref (Open's rules).
func (s *Store) info(ctx context.Context, ref message.BodyRef) (*jetstream.ObjectInfo, error) {
	info, err := s.obs.GetInfo(ctx, ref.Object)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, &message.Invalid{Field: "body", Reason: fmt.Sprintf("object %s is not in %s (deleted, or purged with its dead letter)", ref.Object, Bucket)}
	case err != nil:
		return nil, fmt.Errorf("read body %s: %w", ref.Object, err)
	}
	if int64(info.Size) != ref.Size || info.Digest != ref.Digest {
		return nil, &message.Invalid{Field: "body", Reason: fmt.Sprintf("object %s is not the body the message was queued with (size %d, want %d; digest %s, want %s)", ref.Object, info.Size, ref.Size, info.Digest, ref.Digest)}
	}
	return info, nil
}

// ChunkWait is how long a reader waits for the store to deliver the next
// chunk of a body before it fails (temporarily). A variable for tests.
var ChunkWait = 30 * time.Second

// chunkPoll is how long a reader waits for a chunk before it asks the
// store whether the object is still there: a body deleted while it is
// read (relay dlq purge during a replay's copy, TestDLQReplayRacingPurgeOfItsBody)
// ends the read within about this long, as gone, instead of after
// ChunkWait as a store that does not answer.
const chunkPoll = time.Second

// readAhead is how many chunks (ChunkSize each) a reader buffers.
const readAhead = 4

// chunkReader reads an object's chunks in order, checking its size and
// digest at the end: a body that does not match is an Invalid.
type chunkReader struct {
	it    jetstream.MessagesContext
	stop  func() bool
	ctx   context.Context // Open's: the object's info is asked within it
	store *Store
	ref   message.BodyRef
	buf   []byte
	left  int64
	h     hash.Hash
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		if c.left == 0 {
			if got := jetstream.GetObjectDigestValue(c.h); got != c.ref.Digest {
				return 0, &message.Invalid{Field: "body", Reason: fmt.Sprintf("object %s does not match its digest: changed since it was queued", c.ref.Object)}
			}
			return 0, io.EOF
		}
		m, err := c.next()
		if err != nil {
			return 0, err
		}
		c.buf = m.Data()
		if int64(len(c.buf)) > c.left {
			return 0, &message.Invalid{Field: "body", Reason: fmt.Sprintf("object %s is longer than its size: changed since it was queued", c.ref.Object)}
		}
		c.left -= int64(len(c.buf))
		c.h.Write(c.buf)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// next is the next chunk. One that does not come within ChunkWait (the
// store stopped answering) is a temporary error, not a wait for ever.
// Every chunkPoll without one, the object's info is read: an object
// deleted or changed since Open (its chunks purged with it) is a
// *message.Invalid at once, as Open would say, where the reader waited
// out ChunkWait before.
func (c *chunkReader) next() (jetstream.Msg, error) {
	deadline := time.Now().Add(ChunkWait)
	for {
		wait := min(chunkPoll, time.Until(deadline))
		if wait <= 0 { // NextMaxWait(0) would wait for ever
			return nil, fmt.Errorf("read body %s: %w", c.ref.Object, nats.ErrTimeout)
		}
		m, err := c.it.Next(jetstream.NextMaxWait(wait))
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, nats.ErrTimeout) || !time.Now().Before(deadline) {
			return nil, fmt.Errorf("read body %s: %w", c.ref.Object, err)
		}
		// Asked within Open's context, bounded: a store that does not
		// answer this either leaves the wait to ChunkWait.
		ictx, cancel := context.WithTimeout(c.ctx, min(ChunkWait, 5*chunkPoll))
		_, ierr := c.store.info(ictx, c.ref)
		cancel()
		if message.IsInvalid(ierr) {
			return nil, ierr
		}
	}
}

func (c *chunkReader) Close() error {
	c.stop()
	c.it.Stop()
	return nil
}

// Delete removes a body; one already gone is no error. It does what
// nats.go's ObjectStore.Delete does, without the rollup the stream
// refuses (put): it writes a deletion marker as the object's metadata,
// purges the earlier metadata (keeping the marker), then the chunks.
// The name's metadata subject is never empty in between: a List that
// saw it would otherwise wait for ever (nats.go's watcher looks for the
// last metadata message, then waits for its consumer to deliver one).
func (s *Store) Delete(ctx context.Context, name string) error {
	info, err := s.obs.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil
	}
	if err == nil {
		marker := *info
		marker.Deleted, marker.Size, marker.Chunks, marker.Digest, marker.ModTime = true, 0, 0, "", time.Time{}
		var data []byte
		if data, err = json.Marshal(&marker); err == nil {
			_, err = s.js.PublishMsg(ctx, &nats.Msg{Subject: metaSubject(name), Data: data})
		}
	}
	if err == nil {
		err = s.stream.Purge(ctx, jetstream.WithPurgeSubject(metaSubject(name)), jetstream.WithPurgeKeep(1))
	}
	if err == nil {
		err = s.stream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(info.NUID)))
	}
	if err != nil {
		return fmt.Errorf("delete body %s: %w", name, err)
	}
	return nil
}

func chunkSubject(nuid string) string { return fmt.Sprintf("$O.%s.C.%s", Bucket, nuid) }

// metaSubject is where nats.go's Object Store keeps an object's metadata.
func metaSubject(name string) string {
	return fmt.Sprintf("$O.%s.M.%s", Bucket, base64.URLEncoding.EncodeToString([]byte(name)))
}

// put stores r's content as object name, in nats.go's Object Store
// layout (chunks on a subject of a fresh NUID, then the metadata), so
// that GetInfo and List read it. It is not ObjectStore.Put because that
// marks the metadata with a Nats-Rollup header, which only a stream that
// allows rollups accepts; and on a stream that allows rollups anyone who
// may publish a chunk may publish one with "Nats-Rollup: all" and purge
// every body (SECURITY.md: a producer may store bodies, never purge or
// delete one). The name is fresh (NewName), so there is no earlier
// metadata for a rollup to replace. On an error the chunks are purged
// where the caller may (not with OpenStoreOnly: the sweep removes them).
func (s *Store) put(ctx context.Context, name string, r io.Reader) (*jetstream.ObjectInfo, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:]) // a fresh subject for the chunks, as nats.go's NUID
	subj := chunkSubject(id)
	info := &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: ChunkSize}}, Bucket: Bucket, NUID: id}
	h := sha256.New()
	var acks []jetstream.PubAckFuture
	// waitIn waits (until ctx ends) for every chunk published so far,
	// so that a purge after a failure comes after them all, and returns
	// the first error.
	waitIn := func(ctx context.Context) error {
		var first error
		for _, a := range acks {
			select {
			case <-a.Ok():
			case err := <-a.Err():
				first = cmp.Or(first, err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		acks = acks[:0]
		return first
	}
	wait := func() error { return waitIn(ctx) }
	fail := func(err error) (*jetstream.ObjectInfo, error) {
		// The chunks in flight land (or fail) before they are purged, so
		// that the purge comes after them all: before put returns while
		// ctx is live, after it once ctx has ended (settle).
		s.settle(ctx, func(bg context.Context) {
			wctx, cancel := context.WithTimeout(bg, s.waitFor())
			_ = waitIn(wctx)
			cancel()
			if s.storeOnly {
				return // the sweep removes the chunks
			}
			pctx, cancel := context.WithTimeout(bg, s.waitFor())
			_ = s.stream.Purge(pctx, jetstream.WithPurgeSubject(subj))
			cancel()
		})
		return nil, err
	}
	chunk := make([]byte, ChunkSize)
	for {
		n, err := r.Read(chunk)
		if err != nil && err != io.EOF {
			return fail(err)
		}
		if n > 0 {
			h.Write(chunk[:n])
			// One buffer for every chunk, as nats.go's Put: the
			// publish copies it into the connection's buffer. No
			// retries, unlike nats.go's Put: a retry (after "no
			// responders", a stream leader being elected) would send
			// the buffer again after the next chunk overwrote it, and
			// the body would fail its digest at delivery. Refused, the
			// Put fails whole and its caller tries again.
			a, perr := s.js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: chunk[:n]}, jetstream.WithRetryAttempts(0))
			if perr != nil {
				return fail(perr)
			}
			acks = append(acks, a)
			info.Size += uint64(n)
			info.Chunks++
		}
		if err == io.EOF {
			break
		}
		if len(acks) >= readAhead*4 {
			if err := wait(); err != nil {
				return fail(err)
			}
		}
	}
	info.Digest = jetstream.GetObjectDigestValue(h)
	data, err := json.Marshal(info)
	if err != nil {
		return fail(err)
	}
	if err := wait(); err != nil {
		return fail(err)
	}
	if _, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: metaSubject(name), Data: data}); err != nil {
		return fail(err)
	}
	return info, nil
}

// failWait bounds each step of a failed Put's clean-up: its wait for
// its chunks in flight, their purge, the delete of what it wrote.
const failWait = 10 * time.Second

// waitFor is failWait, or the store's own (tests).
func (s *Store) waitFor() time.Duration { return cmp.Or(s.failWait, failWait) }

// settle runs cleanup, a failed Put's or Copy's removal of what it wrote,
// with ctx's values but not its cancellation (each step bounded by
// waitFor). While ctx is live it runs before the error returns, so that
// nothing of the failed store is left when it does. Once ctx has ended
// the caller has given up (producer.Publish promises to return then,
// relay dlq replay's --timeout has run out), and cleanup runs detached:
// the caller gets its error at once, not after up to a failWait per
// step (chunks held up at a server that does not answer); what cleanup
// does not remove in time the sweep does (package doc).
func (s *Store) settle(ctx context.Context, cleanup func(context.Context)) {
	bg := context.WithoutCancel(ctx)
	if ctx.Err() != nil {
		go cleanup(bg)
		return
	}
	cleanup(bg)
}

// deleteFailed removes what a failed Put or Copy stored under name (its
// metadata: put purges the chunks), as settle runs a clean-up.
func (s *Store) deleteFailed(ctx context.Context, name string) {
	s.settle(ctx, func(bg context.Context) {
		dctx, cancel := context.WithTimeout(bg, s.waitFor())
		_ = s.Delete(dctx, name)
		cancel()
	})
}

// Names lists the bodies stored before cutoff.
func (s *Store) Names(ctx context.Context, cutoff time.Time) ([]string, error) {
	list, err := s.list(ctx)
	return namesBefore(list, cutoff), err
}

// list is the bucket's objects (none when it holds none).
func (s *Store) list(ctx context.Context) ([]*jetstream.ObjectInfo, error) {
	list, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	return list, nil
}

// namesBefore is the names of the objects of list stored before cutoff.
func namesBefore(list []*jetstream.ObjectInfo, cutoff time.Time) []string {
	var out []string
	for _, info := range list {
		if info.ModTime.Before(cutoff) {
			out = append(out, info.Name)
		}
	}
	return out
}
