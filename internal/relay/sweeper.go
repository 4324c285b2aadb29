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
//
// A sweep whose dead letter MAIL_DLQ refused (full, or not answering)
// stops there, and the next one waits on the retry schedule, by such
// sweeps in a row, instead of SweepEvery: every sweep tried every such
// message, a refused copy and a warning each, every second for as long
// as MAIL_DLQ stayed full.
func (e *Engine) sweepLoop(ctx context.Context) {
	refused := 0
	for {
		wait := e.cfg.SweepEvery
		if refused > 0 {
			wait = max(wait, e.cfg.Retry.Delay(refused))
		}
		if !sleepOn(ctx, wall, wait, nil) {
			return
		}
		if e.sweep(ctx) {
			refused++
		} else {
			refused = 0
		}
	}
}

// sweep finds subjects with messages and no account (stream info with a
// subject filter lists them) and dead-letters their messages older than
// UnknownGrace. The grace and a registry read just before keep an account
// being created from losing its first messages to the race between the
// registry write and its lane starting. It reports whether MAIL_DLQ
// refused a dead letter (the sweep stopped there).
func (e *Engine) sweep(ctx context.Context) (refused bool) {
	counts, err := queue.CountByAccount(ctx, e.js, queue.StreamMail)
	if err != nil {
		return false
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
		if e.sweepSubject(ctx, subject, alias) {
			return true
		}
	}
	return false
}

// sweepSubject reads one subject with a temporary consumer of its own,
// or, when the durable consumer of a removed account is still there,
// through that one. A WorkQueue stream refuses a temporary consumer while
// an account consumer covers the subject.
//
// The durable consumer of a removed account stays while any process holds
// a message of it (dropConsumer): another worker process may still be
// sending it, heartbeating it, and will ack it there. Read through that
// consumer, the sweeper gets only what nobody holds (never delivered,
// given back, or left by a process that died, after AckWait), so it never
// dead-letters a message another process is sending. Once the consumer
// holds nothing it is deleted.
//
// It reports whether MAIL_DLQ refused a dead letter: the rest of the
// subject is left for a later sweep (returned to the stream with the
// temporary consumer; through the durable one, after AckWait).
func (e *Engine) sweepSubject(ctx context.Context, subject, alias string) (refused bool) {
	durable := account.ValidateAlias(alias) == nil
	var cons jetstream.Consumer
	var err error
	if durable {
		cons, err = e.js.Consumer(ctx, queue.StreamMail, queue.AccountConsumer(alias))
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false
		}
		durable = err == nil
	}
	if durable {
		defer e.dropConsumer(context.WithoutCancel(ctx), alias)
	} else {
		cons, err = e.js.CreateConsumer(ctx, queue.StreamMail, jetstream.ConsumerConfig{
			Description:       "Relay365 sweeper: mail for an unknown account",
			FilterSubject:     subject,
			AckPolicy:         jetstream.AckExplicitPolicy,
			AckWait:           30 * time.Second,
			InactiveThreshold: time.Minute,
		})
		if err != nil {
			e.log.Debug().Err(err).Str("subject", subject).Msg("sweeper: subject not swept now")
			return false
		}
		// Deleting the consumer returns every message it did not end to the
		// stream (the young ones, if any).
		defer e.js.DeleteConsumer(context.WithoutCancel(ctx), queue.StreamMail, cons.CachedInfo().Name)
	}
	dlqAccount := "unknown"
	if account.ValidateAlias(alias) == nil {
		dlqAccount = alias
	}
	reason := unknownAccount(alias).Error()
	for ctx.Err() == nil {
		if durable && e.accountBack(ctx, alias) {
			// Added again: the account's lanes bind this consumer, and
			// what it holds is theirs to send.
			return false
		}
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			return false
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil || time.Since(md.Timestamp) < e.cfg.UnknownGrace {
				if durable {
					// Back after the grace; a temporary consumer gives
					// them back when it is deleted.
					_ = msg.NakWithDelay(e.cfg.UnknownGrace)
				}
				continue // young: left for its account, if one appears
			}
			id := messageID("", msg.Headers(), md.Sequence.Stream, md.Timestamp, msg.Data())
			err = queue.MoveToDLQ(ctx, e.js, msg, queue.DeadLetter{ID: id, Account: dlqAccount, Reason: reason, Class: string(ClassInvalid)})
			if err != nil {
				e.log.Warn().Err(err).Str("msg_id", id).Uint64("stream_seq", md.Sequence.Stream).Str("subject", subject).Msg("sweeper: dead-lettering failed; the subject's messages stay queued, swept again later")
				refused = true
				break
			}
			e.metrics.outcome("unknown", outcomeDeadLettered)
			e.log.Warn().Str("msg_id", id).Uint64("stream_seq", md.Sequence.Stream).Str("subject", subject).Msg("dead-lettered: no such account")
		}
		if refused || n == 0 {
			return refused
		}
	}
	return false
}

// dropConsumer deletes the durable consumer of a removed account once it
// holds nothing: no message waiting for delivery, none delivered and not
// yet acked. A process whose lane of the account has ended cannot tell
// whether another worker process is still sending a message of it;
// deleting the consumer under that process returned the message to the
// stream in mid-transaction, where the sweeper dead-lettered it as "no
// such account" although Office 365 accepted it a moment later, or, if
// the account was added again meanwhile, a lane of another process got it
// from the consumer made anew and sent it a second time. So the consumer
// stays while it holds anything; the process that acks the last message
// deletes it when its lane ends, and the sweeper (sweepSubject) reads
// what is left through it and deletes it after. A process that died
// holding messages leaves them to come back after AckWait, to the sweeper.
//
// The account is looked up just before: one added again meanwhile keeps
// its consumer. (Between that look and the deletion remains the time of
// one request.)
func (e *Engine) dropConsumer(ctx context.Context, alias string) {
	cons, err := e.js.Consumer(ctx, queue.StreamMail, queue.AccountConsumer(alias))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	if err != nil {
		e.log.Warn().Err(err).Str("account", alias).Msg("account removed; its consumer stays for now")
		return
	}
	info, err := cons.Info(ctx)
	if err != nil {
		e.log.Warn().Err(err).Str("account", alias).Msg("account removed; its consumer stays for now")
		return
	}
	if info.NumAckPending > 0 || info.NumPending > 0 {
		e.log.Debug().Str("account", alias).Int("ack_pending", info.NumAckPending).Uint64("pending", info.NumPending).
			Msg("account removed; its consumer stays while it holds messages (the sweeper ends them)")
		return
	}
	if e.accountBack(ctx, alias) {
		return
	}
	if err := queue.DeleteAccountConsumer(ctx, e.js, alias); err != nil {
		e.log.Warn().Err(err).Str("account", alias).Msg("account removed; its consumer stays for now")
	}
}

// accountBack says whether alias has a lane here or is in the registry
// again (or the registry cannot be read now: then it may be).
func (e *Engine) accountBack(ctx context.Context, alias string) bool {
	if e.hasLane(alias) {
		return true
	}
	_, err := e.accounts.Get(ctx, alias)
	return !errors.Is(err, account.ErrNotFound)
}
