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
type SentMarkers struct {
	kv jetstream.KeyValue
}

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
	return &SentMarkers{kv: kv}, nil
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
// id was accepted at.
func (s *SentMarkers) Mark(ctx context.Context, alias, id string, batch, batches, rcpts int, at time.Time) error {
	b, err := json.Marshal(sentMarker{ID: id, Batch: batch, Batches: batches, Rcpts: rcpts, At: at.UTC()})
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, sentKey(alias, id, batch), b); err != nil {
		return fmt.Errorf("write idempotency marker: %w", err)
	}
	return nil
}
