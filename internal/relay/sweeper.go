package relay

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/queue"
)

// sweepLoop dead-letters mail published for accounts that do not exist.
// No lane pulls mail.send.<x> when x is not in the registry, so without it
// such messages would sit in the stream until MaxAge, unseen.
func (e *Engine) sweepLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.sweep(ctx)
		}
	}
}

// sweep finds subjects with messages and no account (stream info with a
// subject filter lists them) and dead-letters their messages older than
// UnknownGrace. The grace and a registry read just before keep an account
// being created from losing its first messages to the race between the
// registry write and its lane starting.
func (e *Engine) sweep(ctx context.Context) {
	counts, err := queue.CountByAccount(ctx, e.js, queue.StreamMail)
	if err != nil {
		return
	}
	for alias := range counts {
		subject := queue.Subject(alias)
		if e.hasLane(alias) {
			continue
		}
		if account.ValidateAlias(alias) == nil {
			if _, err := e.accounts.Get(ctx, alias); !errors.Is(err, account.ErrNotFound) {
				continue // registered (its lane is starting) or the registry is unreachable
			}
		}
		e.sweepSubject(ctx, subject, alias)
	}
}

// sweepSubject reads one subject with a temporary consumer of its own. A
// WorkQueue stream refuses it while an account consumer covers the subject
// (the account appeared meanwhile): then there is nothing to sweep.
func (e *Engine) sweepSubject(ctx context.Context, subject, alias string) {
	cons, err := e.js.CreateConsumer(ctx, queue.StreamMail, jetstream.ConsumerConfig{
		Description:       "Relay365 sweeper: mail for an unknown account",
		FilterSubject:     subject,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           30 * time.Second,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		e.log.Debug().Err(err).Str("subject", subject).Msg("sweeper: subject not swept now")
		return
	}
	// Deleting the consumer returns every message it did not end to the
	// stream (the young ones, if any).
	defer e.js.DeleteConsumer(context.WithoutCancel(ctx), queue.StreamMail, cons.CachedInfo().Name)
	dlqAccount := "unknown"
	if account.ValidateAlias(alias) == nil {
		dlqAccount = alias
	}
	reason := unknownAccount(alias).Error()
	for ctx.Err() == nil {
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			return
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil || time.Since(md.Timestamp) < e.cfg.UnknownGrace {
				continue // young: left for its account, if one appears
			}
			id := messageID("", msg.Headers(), md.Sequence.Stream)
			err = queue.MoveToDLQ(ctx, e.js, msg, queue.DeadLetter{ID: id, Account: dlqAccount, Reason: reason, Class: string(ClassInvalid)})
			if err != nil {
				e.log.Warn().Err(err).Str("msg_id", id).Uint64("stream_seq", md.Sequence.Stream).Msg("sweeper: dead-lettering failed; the message stays queued")
				continue
			}
			e.metrics.outcome("unknown", outcomeDeadLettered)
			e.log.Warn().Str("msg_id", id).Uint64("stream_seq", md.Sequence.Stream).Str("subject", subject).Msg("dead-lettered: no such account")
		}
		if n == 0 {
			return
		}
	}
}
