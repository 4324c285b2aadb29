package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"relay365/internal/queue"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SentBucket is the KV bucket of idempotency markers (docs/design.md §4).
const SentBucket = "relay_sent"

// SentTTL is how long a marker is kept: as long as MAIL keeps a message
// (its default MaxAge), so any redelivery still finds it.
const SentTTL = 7 * 24 * time.Hour

// SentMarkers records which transactions Office 365 accepted, so a message
// delivered again by JetStream (a lost ack, a crash after the 250) is acked
// without being sent twice. One key per account, message id and recipient
// batch: <alias>.<sha256(alias, id)>.<batch>. The id is the message's
// idempotency key, so the same id published again within SentTTL is not
// sent again either.
//
// Markers are group-committed across all lanes of the process: a marker
// written while another write is in flight waits for it, and the markers
// waiting then are written together as one JetStream atomic batch (at
// most queue.BatchSize), which the file store commits with one synced
// write instead of one each. Every Mark still returns only once its own
// marker is stored, so the crash window stays what the package
// documentation says: one accepted, unmarked transaction per session.
// Without atomic batches on the bucket's stream (a bucket made by an
// earlier version, before relay setup has run), or when the server
// refuses a batch, markers are written one at a time.
type SentMarkers struct {
	kv      jetstream.KeyValue
	nc      *nats.Conn
	batches bool // the bucket's stream takes atomic batches

	mu      sync.Mutex
	queue   []*markOp
	writing bool // a drain goroutine is writing; it takes the queue too
}

// markOp is one marker waiting to be written.
type markOp struct {
	key  string
	val  []byte
	done chan error // buffered: the writer never waits for the caller
}

// sentStream is the bucket's stream.
const sentStream = "KV_" + SentBucket

// markTimeout bounds one group write; each caller also stops waiting
// when its own context ends.
const markTimeout = 30 * time.Second

// OpenSentMarkers creates the bucket if needed.
func OpenSentMarkers(ctx context.Context, js jetstream.JetStream) (*SentMarkers, error) {
	kv, err := queue.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      SentBucket,
		Description: "Relay365 idempotency markers: transactions Office 365 accepted",
		History:     1,
		TTL:         SentTTL,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open idempotency bucket %s: %w", SentBucket, err)
	}
	batches, err := queue.BatchesAllowed(ctx, js, sentStream)
	if err != nil {
		return nil, fmt.Errorf("open idempotency bucket %s: %w", SentBucket, err)
	}
	return &SentMarkers{kv: kv, nc: js.Conn(), batches: batches}, nil
}

// AllowSentBatches lets the markers bucket take atomic batches (relay
// setup; a user that may change streams).
func AllowSentBatches(ctx context.Context, js jetstream.JetStream) error {
	return queue.AllowBatches(ctx, js, sentStream)
}

// sentMarker is the stored value; it names no recipient.
type sentMarker struct {
	ID      string    `json:"id"`
	Batch   int       `json:"batch"`
	Batches int       `json:"batches"`
	Rcpts   int       `json:"rcpts"`
	At      time.Time `json:"at"`
}

func sentKey(alias, id string, batch int) string {
	sum := sha256.Sum256([]byte(alias + "\x00" + id))
	return alias + "." + hex.EncodeToString(sum[:16]) + "." + strconv.Itoa(batch)
}

// Sent reports whether batch of message id was already accepted.
func (s *SentMarkers) Sent(ctx context.Context, alias, id string, batch int) (bool, error) {
	_, err := s.kv.Get(ctx, sentKey(alias, id, batch))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return false, nil
	default:
		return false, fmt.Errorf("read idempotency marker: %w", err)
	}
}

// Unsent returns the batches (of batches) of message id that have no
// marker yet, in order. The lookups of a message with several batches go
// out together, so the message waits for one round trip, not one per
// batch; any failed lookup fails the whole answer (nothing is sent on a
// guess).
func (s *SentMarkers) Unsent(ctx context.Context, alias, id string, batches int) ([]int, error) {
	sent := make([]bool, batches)
	errs := make([]error, batches)
	var wg sync.WaitGroup
	for i := range batches {
		if i == batches-1 {
			sent[i], errs[i] = s.Sent(ctx, alias, id, i) // the last one on this goroutine
			break
		}
		wg.Go(func() { sent[i], errs[i] = s.Sent(ctx, alias, id, i) })
	}
	wg.Wait()
	var todo []int
	for i, done := range sent {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if !done {
			todo = append(todo, i)
		}
	}
	return todo, nil
}

// Mark records that batch (of batches, with rcpts recipients) of message
// id was accepted at. It returns once the marker is stored (or ctx ends).
func (s *SentMarkers) Mark(ctx context.Context, alias, id string, batch, batches, rcpts int, at time.Time) error {
	b, err := json.Marshal(sentMarker{ID: id, Batch: batch, Batches: batches, Rcpts: rcpts, At: at.UTC()})
	if err != nil {
		return err
	}
	op := &markOp{key: sentKey(alias, id, batch), val: b, done: make(chan error, 1)}
	s.mu.Lock()
	s.queue = append(s.queue, op)
	if !s.writing {
		s.writing = true
		go s.drain()
	}
	s.mu.Unlock()
	select {
	case err := <-op.done:
		if err != nil {
			return fmt.Errorf("write idempotency marker: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("write idempotency marker: %w", ctx.Err())
	}
}

// drain writes the queued markers, as many at a time as wait, until none
// is left.
func (s *SentMarkers) drain() {
	for {
		s.mu.Lock()
		n := min(len(s.queue), queue.BatchSize)
		if n == 0 {
			s.writing = false
			s.mu.Unlock()
			return
		}
		ops := s.queue[:n:n]
		s.queue = s.queue[n:]
		s.mu.Unlock()
		s.write(ops)
	}
}

// write stores ops: one Put, or an atomic batch of puts on the bucket's
// stream; a batch the server refuses whole is written one Put at a time.
func (s *SentMarkers) write(ops []*markOp) {
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	if len(ops) > 1 && s.batches {
		msgs := make([]*nats.Msg, len(ops))
		for i, op := range ops {
			// A KV put is a publish on $KV.<bucket>.<key>.
			msgs[i] = &nats.Msg{Subject: "$KV." + SentBucket + "." + op.key, Data: op.val}
		}
		_, err := queue.CommitBatch(ctx, s.nc, msgs)
		if !queue.IsBatchRefused(err) {
			for _, op := range ops {
				op.done <- err
			}
			return
		}
	}
	for _, op := range ops {
		_, err := s.kv.Put(ctx, op.key, op.val)
		op.done <- err
	}
}
