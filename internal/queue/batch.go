package queue

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Batch publishing (JetStream's atomic batch publish, nats-server 2.12
// and later, ADR-50).
//
// A producer that hands over many messages at once (a report run, a
// backlog, the bench) would pay one synced write per message with
// Publish: under sync always the file store fsyncs every message it
// stores, with no group commit. An atomic batch is staged by the server
// and committed into MAIL as a whole, with one synced write for the
// batch (nats-server coalesces the commit's sync), so a batch of
// BatchSize messages costs MAIL one fsync instead of BatchSize. The
// promise stays the same: when PublishBatch returns, every message it
// reports is stored as durably as a single publish makes it.
//
// The protocol is three headers on ordinary publishes to mail.send.*:
// Nats-Batch-Id (the same on every message of a batch), Nats-Batch-Sequence
// (1, 2, … with no gap) and Nats-Batch-Commit: 1 on the last, which is sent
// as a request; its PubAck carries the last sequence and the batch's
// count, and the batch's sequences are contiguous. Only the commit is
// acknowledged, so a producer needs no permission a single publish does not.
//
// The server refuses a whole batch for reasons that are not the
// messages' own fault; PublishBatch then publishes that batch's messages
// one at a time, as Publish would (fallbackCodes):
//   - a message id already in the dedupe window (10201): single publishes
//     say which ones are duplicates, the rest are stored;
//   - atomic publish disabled on MAIL (10174): a MAIL made by an older
//     version and not updated yet by relay setup;
//   - a gap (10176, incomplete: a message of the batch was dropped on
//     the way), too many batches in flight (10210), batch too large
//     (10199).
//
// A server that does not know atomic batches stores each message as an
// ordinary publish and acknowledges only the last without a count; the
// batch is then published again one at a time, and the messages already
// stored come back as duplicates with their sequences (their
// Nats-Msg-Id), so nothing is stored twice and nothing is reported
// stored unacknowledged.

// BatchSize is the most messages PublishBatch puts in one atomic batch.
// nats-server takes up to 1,000 (max_batch_size) and stages a batch on
// disk until its commit; 100 already shares the commit's fsync between
// 100 messages, keeps the staging small and the producer's wait for the
// PubAck short.
const BatchSize = 100

// MinBatch is the fewest messages PublishBatch sends as an atomic batch;
// fewer are published one at a time. nats-server stages every atomic
// batch of a one-replica file stream in a file store of its own
// (directories, files, a sync) before the commit, a few milliseconds
// whatever the batch's size: BenchmarkPublishBatch (sync always) put a
// batch of 4 at about 4 ms, a batch of 16 at 7 ms and a batch of 100 at
// 9 ms, against 0.5 ms for one single publish. Below about 16 messages a
// batch costs more than it saves.
const MinBatch = 16

// Header names of the atomic batch protocol.
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// JetStream error codes (nats-server's errors.json) for which a batch is
// published again one message at a time.
var fallbackCodes = map[jetstream.ErrorCode]string{
	10174: "atomic publish is disabled on the stream",
	10176: "the batch arrived incomplete",
	10199: "the batch is too large for the server",
	10201: "the batch holds a message id already published",
	10210: "too many batches in flight",
}

// BatchItem is one message for PublishBatch: the JSON of docs/design.md
// §3 (or the envelope naming a stored body) for account, id its
// idempotency key.
type BatchItem struct {
	Account string
	ID      string
	Data    []byte
}

// PublishBatch puts items on MAIL in atomic batches of at most BatchSize,
// in order, and returns one result per item (fewer than MinBatch items
// are published one at a time). It retries as Publish does
// (no leader, a timeout) until ctx ends. With an error it returns the
// results of the items known to be stored, a prefix of items; the rest
// may or may not be stored, and publishing them again is safe (their ids
// make any copy already stored a duplicate).
func PublishBatch(ctx context.Context, js jetstream.JetStream, items []BatchItem) ([]PublishResult, error) {
	res := make([]PublishResult, 0, len(items))
	// As few batches as BatchSize allows, of even sizes (105 messages:
	// 53 and 52, not 100 and 5).
	k := (len(items) + BatchSize - 1) / BatchSize
	for i := range k {
		chunk := items[i*len(items)/k : (i+1)*len(items)/k]
		var r []PublishResult
		var err error
		if len(chunk) < MinBatch {
			r, err = publishEach(ctx, js, chunk)
		} else {
			r, err = publishChunk(ctx, js, chunk)
		}
		res = append(res, r...)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// publishChunk publishes one batch, retrying on the errors Publish
// retries on, each time under a new batch id.
func publishChunk(ctx context.Context, js jetstream.JetStream, items []BatchItem) ([]PublishResult, error) {
	for attempt := 0; ; attempt++ {
		res, err := publishAtomic(ctx, js.Conn(), items)
		var fb *fallbackError
		switch {
		case err == nil:
			return res, nil
		case errors.As(err, &fb):
			return publishEach(ctx, js, items)
		case !retryable(err) || ctx.Err() != nil:
			return nil, fmt.Errorf("publish a batch of %d: %w", len(items), err)
		}
		if err := AwaitRetry(ctx, attempt, err); err != nil {
			return nil, fmt.Errorf("publish a batch of %d: %w", len(items), err)
		}
	}
}

// fallbackError is a batch refused as a whole for a reason in
// fallbackCodes, or acknowledged by a server that does not batch.
type fallbackError struct{ why string }

func (e *fallbackError) Error() string { return "batch not taken whole: " + e.why }

// batchAck is the commit's answer: a PubAck with the batch's id and
// count, or an error.
type batchAck struct {
	Error    *jetstream.APIError `json:"error,omitempty"`
	Stream   string              `json:"stream"`
	Sequence uint64              `json:"seq"`
	BatchID  string              `json:"batch,omitempty"`
	Count    int                 `json:"count,omitempty"`
}

// publishAtomic sends items as one atomic batch and returns their
// sequences.
func publishAtomic(ctx context.Context, nc *nats.Conn, items []BatchItem) ([]PublishResult, error) {
	// At most 64 characters (the server's limit); unique per attempt, so
	// a retry never continues a batch the server may still stage.
	id := rand.Text()
	for i, it := range items {
		m := mailMsg(it.Account, it.ID, it.Data)
		m.Header.Set(hdrBatchID, id)
		m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
		if i < len(items)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return nil, err
			}
			continue
		}
		m.Header.Set(hdrBatchCommit, "1")
		resp, err := nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return nil, err
		}
		return readBatchAck(resp.Data, id, len(items))
	}
	return nil, nil
}

// readBatchAck turns the commit's answer into the batch's results.
func readBatchAck(data []byte, id string, n int) ([]PublishResult, error) {
	var ack batchAck
	if err := json.Unmarshal(data, &ack); err != nil {
		return nil, fmt.Errorf("unreadable answer to a batch commit: %w", err)
	}
	if ack.Error != nil {
		if why, ok := fallbackCodes[ack.Error.ErrorCode]; ok {
			return nil, &fallbackError{why: why}
		}
		return nil, ack.Error
	}
	if ack.BatchID != id || ack.Count != n {
		// A server without atomic batches stored every message on its
		// own and acknowledged the last.
		return nil, &fallbackError{why: fmt.Sprintf("the server acknowledged batch %q of %d, not %q of %d", ack.BatchID, ack.Count, id, n)}
	}
	if ack.Sequence < uint64(n) {
		return nil, fmt.Errorf("batch commit acknowledged at sequence %d, before its %d messages", ack.Sequence, n)
	}
	res := make([]PublishResult, n)
	first := ack.Sequence - uint64(n) + 1
	for i := range res {
		res[i] = PublishResult{Seq: first + uint64(i)}
	}
	return res, nil
}

// publishEach publishes items one at a time (Publish), for a batch the
// server would not take whole.
func publishEach(ctx context.Context, js jetstream.JetStream, items []BatchItem) ([]PublishResult, error) {
	res := make([]PublishResult, len(items))
	for i, it := range items {
		r, err := Publish(ctx, js, it.Account, it.ID, it.Data)
		if err != nil {
			return res[:i], err
		}
		res[i] = r
	}
	return res, nil
}
