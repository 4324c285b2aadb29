package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
)

// Queue lifetime (Config.QueueLifetime, relay serve --queue-lifetime):
// mail that could not be sent within it is given up to MAIL_DLQ with
// reason "expired after <lifetime> undelivered" and the last failure,
// counted as relay_messages_total{outcome="expired"}, instead of waiting
// until JetStream's MaxAge drops it with no trace (queue.MaxAgeFor keeps
// MaxAge a margin above the lifetime). Its age counts from the first
// queueing (queue.QueuedAt: a requeue keeps it; a replay from MAIL_DLQ
// starts afresh).
//
// Two paths find expired mail:
//   - a lane that fetches a message checks its age first (handle);
//   - a paused lane fetches nothing, so every ExpiryEvery the engine reads
//     the oldest messages of each paused lane's subject from the stream
//     and moves those past the lifetime (queue.ExpireToDLQ: copy, PubAck,
//     then delete by sequence), stopping at the first stored within the
//     lifetime. Its dead letters carry the pause's reason.
//
// Mail of an account no worker serves at all is the sweeper's (unknown
// accounts) or, with no worker running, JetStream's MaxAge.

// classExpired is the Relay-Class of an expired message's dead letter.
const classExpired = "expired"

// expired reports whether mail first queued at queued is past the
// lifetime (JetStream's timestamps are wall time, whatever the clock).
func (e *Engine) expired(queued time.Time) bool {
	return e.cfg.QueueLifetime > 0 && time.Since(queued) > e.cfg.QueueLifetime
}

// expiryReason is the dead letter's reason and last reply for a message
// whose last failure here was lastFail ("" if none was seen) on a lane
// whose pause reply is pauseReply ("" if none).
func (e *Engine) expiryReason(lastFail, pauseReply string) (reason, lastReply string) {
	reason = fmt.Sprintf("expired after %s undelivered", e.cfg.QueueLifetime)
	last := lastFail
	if last == "" {
		last = pauseReply
	}
	if last != "" {
		reason += "; last failure: " + last
	}
	return reason, last
}

// pauseReply is why the lane is paused ("" when it is not).
func (l *lane) pauseReply() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.p.on {
		return ""
	}
	return l.p.reason
}

// expireLoop runs the paused lanes' expiry every ExpiryEvery.
func (e *Engine) expireLoop(ctx context.Context) {
	if e.cfg.QueueLifetime <= 0 {
		return
	}
	t := time.NewTicker(e.cfg.ExpiryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.mu.Lock()
		var paused []*lane
		for _, l := range e.lanes {
			if l.pauseReply() != "" {
				paused = append(paused, l)
			}
		}
		e.mu.Unlock()
		for _, l := range paused {
			l.expirePaused(ctx)
		}
	}
}

// expirePaused moves the paused lane's expired mail to MAIL_DLQ, oldest
// first, up to the first message stored within the lifetime.
func (l *lane) expirePaused(ctx context.Context) {
	s, err := l.e.js.Stream(ctx, queue.StreamMail)
	if err != nil {
		return
	}
	subject := queue.Subject(l.alias)
	for seq := uint64(1); ctx.Err() == nil; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return
		case err != nil:
			l.log.Debug().Err(err).Msg("expiry: the stream could not be read; trying at the next round")
			return
		case !l.e.expired(m.Time):
			return // this and every later message were stored within the lifetime
		}
		seq = m.Sequence + 1
		queued := queue.QueuedAt(m.Header, m.Time)
		if !l.e.expired(queued) {
			continue
		}
		id := messageID("", m.Header, m.Sequence, m.Time, m.Data)
		reason, last := l.e.expiryReason(l.lastFailure(m.Sequence), l.pauseReply())
		if err := queue.ExpireToDLQ(ctx, l.e.js, m, queue.DeadLetter{ID: id, Account: l.alias, Reason: reason, Class: classExpired, LastReply: last}); err != nil {
			l.log.Error().Err(err).Uint64("stream_seq", m.Sequence).Msg("expired, but dead-lettering failed; trying at the next round")
			return
		}
		l.forget(m.Sequence)
		l.e.metrics.outcome(l.alias, outcomeExpired)
		l.log.Warn().Uint64("stream_seq", m.Sequence).Str("msg_id", id).Time("queued", queued).Str("reason", reason).Msg("expired while the account was paused: dead-lettered undelivered")
	}
}
