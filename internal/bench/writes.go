package bench

// Store writes, counted from JetStream's own accounting (the stream list
// of the relay's embedded server, read as the operator) before and after
// a run:
//
//   - every message stored in any stream — MAIL, MAIL_DLQ, every KV bucket
//     (pacing, idempotency markers, tokens) and the body store — is one
//     write: the growth of each stream's last sequence;
//   - every message removed from a work-queue stream (MAIL: the relay's
//     ack removes it) is one more: the file store writes a delete record
//     for each removal that is not by a limit. It is the growth of the
//     last sequence less the growth of the message count.
//
// With the embedded server's sync "always" the file store fsyncs each of
// these writes before it answers, so the count is the synced writes. Not
// counted: the consumers' state files (written with O_SYNC too, but
// batched by the server to at most ten a second per consumer, whatever the
// message rate) and removals by a limit (a KV bucket's older revision, an
// expired marker), which write nothing at once.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
)

// streamCounts is one reading: per stream, its last sequence, message
// count and retention.
type streamCounts map[string]streamCount

type streamCount struct {
	last, msgs uint64
	workQueue  bool
}

// storeWrites reads every stream's state.
func (e *env) storeWrites(ctx context.Context) (streamCounts, error) {
	out := streamCounts{}
	l := e.ajs.ListStreams(ctx)
	for si := range l.Info() {
		out[si.Config.Name] = streamCount{last: si.State.LastSeq, msgs: si.State.Msgs, workQueue: si.Config.Retention == jetstream.WorkQueuePolicy}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("JetStream's stream list: %w", err)
	}
	return out, nil
}

// since is the writes between before and c (a stream made in between
// counts from zero).
func (c streamCounts) since(before streamCounts) int64 {
	var n int64
	for name, s := range c {
		b := before[name]
		stored := int64(s.last - b.last)
		n += stored
		if s.workQueue {
			n += stored - (int64(s.msgs) - int64(b.msgs))
		}
	}
	return n
}

// waitMailEmpty waits until MAIL holds no message: the relay has acked
// (and so removed) everything it delivered.
func (e *env) waitMailEmpty(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	for {
		s, err := e.ajs.Stream(ctx, queue.StreamMail)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs == 0 {
			return nil
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%d messages still in %s", info.State.Msgs, queue.StreamMail), ctx.Err())
		}
	}
}
