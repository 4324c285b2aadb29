package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"relay365/internal/queue"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
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
// Markers are read from the bucket's stream leader, never by a direct get
// (see marker).
type SentMarkers struct {
	kv     jetstream.KeyValue
	leader *queue.LeaderReader
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
	return &SentMarkers{kv: kv, leader: queue.NewLeaderReader(js, SentBucket)}, nil
}

// sentMarker is the stored value; it names no recipient.
type sentMarker struct {
	ID      string    `json:"id"`
	Batch   int       `json:"batch"`
	Batches int       `json:"batches"`
	Rcpts   int       `json:"rcpts"`
	At      time.Time `json:"at"`
	// Refused are the positions in the batch of the recipients the
	// server refused at RCPT while it took the others (no addresses): a
	// redelivery after a crash or a failed dead letter finds them here
	// and dead-letters them, instead of taking the batch as sent to all.
	Refused []int `json:"refused,omitempty"`
	// Deferred are the positions of the recipients refused for now (a
	// 4xx about them alone): a copy for them is queued (lane.finish).
	Deferred []int `json:"deferred,omitempty"`
}

func sentKey(alias, id string, batch int) string {
	sum := sha256.Sum256([]byte(alias + "\x00" + id))
	return alias + "." + hex.EncodeToString(sum[:16]) + "." + strconv.Itoa(batch)
}

// Sent reports whether batch of message id was already accepted, with
// the marker when it was.
func (s *SentMarkers) Sent(ctx context.Context, alias, id string, batch int) (bool, error) {
	m, err := s.marker(ctx, alias, id, batch)
	return m != nil, err
}

// marker reads one batch's marker; nil when there is none.
func (s *SentMarkers) marker(ctx context.Context, alias, id string, batch int) (*sentMarker, error) {
	// From the bucket's stream leader, never by a direct get
	// (queue.LeaderReader): a replica restarted after a server's outage
	// answers direct gets before it has caught up, and a marker written
	// during the outage read as missing, so the message was sent again
	// (docs/design.md §7.10).
	v, _, found, err := s.leader.Last(ctx, sentKey(alias, id, batch))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read idempotency marker: %w", err)
	case !found:
		return nil, nil
	}
	var m sentMarker
	if json.Unmarshal(v, &m) != nil {
		// Written by no version of the relay; it still says sent.
		return &sentMarker{ID: id, Batch: batch}, nil
	}
	return &m, nil
}

// Unsent returns the batches of message id, split as batches is, that
// have no marker yet, in order. The lookups of a message with several
// batches go out together, so the message waits for one round trip, not
// one per batch; any failed lookup fails the whole answer (nothing is sent
// on a guess).
//
// A marker is kept by batch index, so a message must be split the same
// way at every delivery (docs/design.md §3.4). The split follows the
// account's per_day, which may change between deliveries: then batch 0's
// marker, written with the split of its time, disagrees with batches
// (how many batches, or how many recipients in the first), and Unsent
// returns that split's batch size as resplit, with no todo: the caller
// splits again with it and asks again. (Taking the markers of one split
// for the batches of another would skip recipients never sent, or send
// some twice.)
func (s *SentMarkers) Unsent(ctx context.Context, alias, id string, batches [][]string) (todo []int, resplit int, err error) {
	todo, _, resplit, err = s.unsent(ctx, alias, id, batches)
	return todo, resplit, err
}

// unsent is Unsent that also returns, by batch, the markers of batches
// already sent with recipients refused (sentMarker.Refused, Deferred).
func (s *SentMarkers) unsent(ctx context.Context, alias, id string, batches [][]string) (todo []int, refused map[int]*sentMarker, resplit int, err error) {
	marks := make([]*sentMarker, len(batches))
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	for i := range batches {
		if i == len(batches)-1 {
			marks[i], errs[i] = s.marker(ctx, alias, id, i) // the last one on this goroutine
			break
		}
		wg.Go(func() { marks[i], errs[i] = s.marker(ctx, alias, id, i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, nil, 0, err
		}
	}
	if m := marks[0]; m != nil && splitOf(m, batches) && (m.Batches != len(batches) || m.Rcpts != len(batches[0])) {
		return nil, nil, m.Rcpts, nil
	}
	for i, m := range marks {
		switch {
		case m == nil:
			todo = append(todo, i)
		case len(m.Refused) > 0 || len(m.Deferred) > 0:
			if refused == nil {
				refused = make(map[int]*sentMarker)
			}
			refused[i] = m
		}
	}
	return todo, refused, 0, nil
}

// splitOf says whether batch 0's marker m can be of this message split
// another way: its recipient count, as batch 0 of a split, gives as many
// batches as m records for this message's recipients. An id published
// again with other recipients (after MAIL's duplicate window, within the
// markers' 7 days) fails it: its markers stand by index, as they always
// did, and the message is a duplicate (docs/design.md §7.10).
func splitOf(m *sentMarker, batches [][]string) bool {
	total := 0
	for _, b := range batches {
		total += len(b)
	}
	switch {
	case m.Rcpts <= 0 || m.Batches <= 0:
		return false // an older marker, or none of this shape
	case m.Batches == 1:
		return m.Rcpts == total
	default:
		return m.Rcpts < total && (total+m.Rcpts-1)/m.Rcpts == m.Batches
	}
}

// markRetry is the schedule on which a marker write that failed is tried
// again, for up to markRetryFor, before the message is acked: a write
// lost with a server, or refused while relay_sent's stream elects a new
// leader (nats-server's Raft waits 4 to 9 s before it elects one), left
// the batch unmarked, and when the message's ack was lost in the same
// outage its redelivery sent it again (docs/design.md §7.10). The value
// written is the same each time (a second write of it is harmless). The
// wait holds the session's next transaction, not other sessions.
var markRetry = Backoff{Base: 500 * time.Millisecond, Max: 4 * time.Second, Jitter: 0.2}

const markRetryFor = 20 * time.Second

// markBatch runs write (a batch's marker) until it succeeds, on markRetry
// for up to markRetryFor, or until ctx ends; it returns the last error.
func markBatch(ctx context.Context, log zerolog.Logger, write func(context.Context) error) error {
	deadline := time.Now().Add(markRetryFor)
	for try := 1; ; try++ {
		err := write(ctx)
		if err == nil {
			return nil
		}
		wait := markRetry.Delay(try)
		if ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		log.Warn().Err(err).Int("try", try).Dur("retry_in_ms", wait).Msg("sent, but the idempotency marker is not written yet: trying again before the ack")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Mark records that batch (of batches, with rcpts recipients) of message
// id was accepted at.
func (s *SentMarkers) Mark(ctx context.Context, alias, id string, batch, batches, rcpts int, at time.Time) error {
	return s.mark(ctx, alias, id, batch, batches, rcpts, at, nil, nil)
}

// mark is Mark with the positions of the batch's recipients refused for
// good and for now.
func (s *SentMarkers) mark(ctx context.Context, alias, id string, batch, batches, rcpts int, at time.Time, refused, deferred []int) error {
	b, err := json.Marshal(sentMarker{ID: id, Batch: batch, Batches: batches, Rcpts: rcpts, At: at.UTC(), Refused: refused, Deferred: deferred})
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, sentKey(alias, id, batch), b); err != nil {
		return fmt.Errorf("write idempotency marker: %w", err)
	}
	return nil
}
