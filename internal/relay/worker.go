// Package relay is the worker: it takes messages from the MAIL stream,
// validates and renders them, gets an access token, submits over STARTTLS +
// AUTH XOAUTH2, and then acks, retries or dead-letters.
//
// Failure semantics. Every attempt ends in exactly one of four actions,
// decided by the class of the error (errors.go, OFFICE365.md §4):
//   - ack (DoubleAck, so the server confirmed it) after Office 365's 250;
//   - retry: NakWithDelay on DefaultRetry (jittered, capped exponential);
//     never a plain Nak, which redelivers at once and burns MaxDeliver;
//   - pause: the account cannot send (consent, SMTP AUTH disabled, quota):
//     NakWithDelay on the slower DefaultPause schedule;
//   - dead-letter: the message itself can never be sent (bad input, unknown
//     account, 5xx for this message): a copy with the reason goes to
//     MAIL_DLQ first, then the original is terminated.
//
// A message that reaches MaxDeliver while still failing temporarily is
// dead-lettered with the last reply as the reason, since JetStream would
// otherwise keep it in the WorkQueue stream, undelivered and unseen.
//
// Prefetch is bounded by free worker slots (DESIGN.md §7): messages are
// fetched only when a worker can start them, and a long send heartbeats
// with InProgress at AckWait/3 so it is not redelivered under its feet.
package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/token"
)

// Tokens gives access tokens; the token service's client implements it.
type Tokens interface {
	Token(ctx context.Context, account string) (token.AccessToken, error)
	ForceRefresh(ctx context.Context, account string) (token.AccessToken, error)
}

// Accounts looks up account configuration.
type Accounts interface {
	Get(ctx context.Context, alias string) (account.Account, error)
}

// Config tunes the workers. Zero values take the defaults.
type Config struct {
	Workers       int           // concurrent deliveries; default 8
	AckWait       time.Duration // must match the consumer's; default 60s
	MaxDeliver    int           // must match the consumer's; default 50
	Retry         Backoff       // default DefaultRetry
	Pause         Backoff       // default DefaultPause
	ShutdownGrace time.Duration // how long in-flight sends may finish after stop; default 30s
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 50
	}
	if c.Retry.Base <= 0 {
		c.Retry = DefaultRetry
	}
	if c.Pause.Base <= 0 {
		c.Pause = DefaultPause
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
}

// Worker pulls from the shared durable consumer and delivers.
type Worker struct {
	cfg       Config
	js        jetstream.JetStream
	consumer  queue.ConsumerConfig
	accounts  Accounts
	tokens    Tokens
	transport *Transport
	metrics   *Metrics
	log       zerolog.Logger
	now       func() time.Time
}

// Deps are the worker's collaborators.
type Deps struct {
	JS        jetstream.JetStream
	Accounts  Accounts
	Tokens    Tokens
	Transport *Transport // default: a Transport with default timeouts
	Registry  prometheus.Registerer
	Log       zerolog.Logger
}

// New builds a worker; Run starts it.
func New(d Deps, cfg Config) *Worker {
	cfg.defaults()
	if d.Transport == nil {
		d.Transport = &Transport{}
	}
	return &Worker{
		cfg: cfg, js: d.JS, accounts: d.Accounts, tokens: d.Tokens, transport: d.Transport,
		consumer: queue.ConsumerConfig{AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver},
		metrics:  NewMetrics(d.Registry), log: d.Log, now: time.Now,
	}
}

// Run binds the consumer and delivers until ctx is done, then lets in-flight
// deliveries finish within ShutdownGrace. Messages not yet started stay in
// the stream for the next start.
func (w *Worker) Run(ctx context.Context) error {
	// In-flight sends outlive ctx by at most ShutdownGrace.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	slots := make(chan struct{}, w.cfg.Workers)
	var wg sync.WaitGroup
	defer func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(w.cfg.ShutdownGrace):
			w.log.Warn().Msg("shutdown grace over; cancelling sends still in flight (they will be redelivered)")
			cancelSends()
			<-done
		}
	}()

	var cons jetstream.Consumer
	for ctx.Err() == nil {
		if cons == nil {
			c, err := queue.EnsureConsumer(ctx, w.js, w.consumer)
			if err != nil {
				if ctx.Err() == nil {
					w.log.Error().Err(err).Msg("cannot bind the consumer; retrying")
					sleep(ctx, time.Second)
				}
				continue
			}
			cons = c
		}
		// Take one slot (waiting), then any others free: fetch only what
		// can start now.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		n := 1
	more:
		for n < w.cfg.Workers {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		fetchCtx, cancelFetch := context.WithTimeout(ctx, 2*time.Second)
		batch, err := cons.Fetch(n, jetstream.FetchContext(fetchCtx))
		if err != nil {
			cancelFetch()
			for range n {
				<-slots
			}
			if ctx.Err() != nil {
				return nil
			}
			// Missed heartbeats or a deleted consumer are not terminal
			// (DESIGN.md §7): bind again.
			w.log.Warn().Err(err).Msg("fetch failed; re-binding the consumer")
			cons = nil
			continue
		}
		started := 0
		for msg := range batch.Messages() {
			started++
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				w.handle(sendCtx, msg)
			}()
		}
		cancelFetch()
		for range n - started {
			<-slots
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// attempt is one delivery of one stream message, with what we learn on the way.
type attempt struct {
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	id      string
	account string // alias once known to exist, else "unknown" (metric label)
	log     zerolog.Logger
}

func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error().Err(err).Msg("message without metadata; leaving it for redelivery")
		return
	}
	a := &attempt{msg: msg, meta: meta, id: msg.Headers().Get(jetstream.MsgIDHeader), account: "unknown"}
	a.log = w.log.With().Uint64("stream_seq", meta.Sequence.Stream).Uint64("attempt", meta.NumDelivered).Logger()

	stopBeat := w.heartbeat(ctx, msg)
	start := time.Now()
	err = w.deliver(ctx, a)
	stopBeat()
	w.metrics.duration.Observe(time.Since(start).Seconds())
	w.finish(ctx, a, err)
}

// deliver runs one attempt and returns nil on 250 or the classified error.
func (w *Worker) deliver(ctx context.Context, a *attempt) error {
	subjectAccount := strings.TrimPrefix(a.msg.Subject(), queue.SubjectPrefix)
	m, err := message.Decode(a.msg.Data())
	if err != nil {
		return err
	}
	if m.ID == "" {
		m.ID = a.id
	}
	if m.Account == "" {
		m.Account = subjectAccount
	}
	a.id = m.ID
	a.log = a.log.With().Str("msg_id", m.ID).Logger()
	if m.Account != subjectAccount {
		return &message.Invalid{Field: "account", Reason: fmt.Sprintf("%q does not match the subject's account %q", m.Account, subjectAccount)}
	}
	if err := m.Validate(); err != nil {
		return err
	}
	acct, err := w.accounts.Get(ctx, m.Account)
	if errors.Is(err, account.ErrNotFound) {
		return &message.Invalid{Field: "account", Reason: fmt.Sprintf("unknown account %q (add it with authtool login)", m.Account)}
	}
	if err != nil {
		return fmt.Errorf("account registry: %w", err) // temporary
	}
	a.account = acct.Alias
	a.log = a.log.With().Str("account", acct.Alias).Logger()
	r, err := message.Render(m, message.Sender{
		Mailbox: acct.Mailbox, Policy: message.FromPolicy(acct.FromPolicy), SendAs: acct.SendAs,
	}, w.now())
	if err != nil {
		return err
	}
	ep := Endpoint{Addr: acct.SMTPAddr, CAFile: acct.CAFile}
	tok, err := w.tokens.Token(ctx, acct.Alias)
	if err != nil {
		return err
	}
	err = w.transport.Send(ctx, ep, acct.Mailbox, tok.Token, r)
	var se *SMTPError
	if errors.As(err, &se) && se.Class == ClassAuth {
		// 535 5.7.3: the token may have been revoked or rotated early.
		// One forced refresh, one more try (OFFICE365.md §4).
		w.metrics.reply(a.account, se.Code, se.Class)
		a.log.Warn().Int("smtp_code", se.Code).Str("reply", se.Reply()).Msg("authentication refused; refreshing the token once")
		if tok, err = w.tokens.ForceRefresh(ctx, acct.Alias); err != nil {
			return err
		}
		err = w.transport.Send(ctx, ep, acct.Mailbox, tok.Token, r)
	}
	return err
}

// classify turns any delivery error into its class and the reply to record.
func classify(err error) (Class, *SMTPError) {
	var se *SMTPError
	var ie *token.IdentityError
	switch {
	case errors.As(err, &se):
		return se.Class, se
	case message.IsInvalid(err):
		return ClassInvalid, nil
	case errors.As(err, &ie):
		if ie.Class == token.StateTransient {
			return ClassTransient, nil
		}
		return ClassIdentity, nil
	default:
		return ClassTransient, nil // unknown errors count as temporary
	}
}

func (w *Worker) finish(ctx context.Context, a *attempt, err error) {
	if err == nil {
		if ackErr := a.msg.DoubleAck(ctx); ackErr != nil {
			// The mail went; the ack did not. It will be redelivered and,
			// until the sent-marker lands, sent again.
			a.log.Error().Err(ackErr).Msg("sent, but the ack failed; the message may be sent twice")
		}
		w.metrics.reply(a.account, 250, "sent")
		w.metrics.outcome(a.account, "sent")
		a.log.Info().Int("smtp_code", 250).Msg("sent")
		return
	}
	class, se := classify(err)
	action := class.Action()
	reply := ""
	ev := a.log.Warn().Err(err).Str("class", string(class))
	if se != nil {
		w.metrics.reply(a.account, se.Code, class)
		reply = se.Reply()
		ev = ev.Int("smtp_code", se.Code)
	}
	last := a.meta.NumDelivered >= uint64(w.cfg.MaxDeliver)
	if action != ActionDeadLetter && last {
		action = ActionDeadLetter
		err = fmt.Errorf("gave up after %d attempts: %w", a.meta.NumDelivered, err)
	}
	switch action {
	case ActionDeadLetter:
		dlErr := queue.MoveToDLQ(ctx, w.js, a.msg, queue.DeadLetter{
			ID: a.id, Account: a.account, Reason: err.Error(), Class: string(class), LastReply: reply,
		})
		if dlErr != nil {
			ev.Err(dlErr).Msg("dead-lettering failed; the message stays queued")
			_ = a.msg.NakWithDelay(w.cfg.Retry.Delay(int(a.meta.NumDelivered)))
			return
		}
		w.metrics.outcome(a.account, "dead_lettered")
		ev.Msg("dead-lettered")
	case ActionPause:
		delay := w.cfg.Pause.Delay(int(a.meta.NumDelivered))
		_ = a.msg.NakWithDelay(delay)
		w.metrics.outcome(a.account, "paused")
		ev.Dur("retry_in", delay).Msg("account cannot send now; message kept queued")
	default:
		delay := w.cfg.Retry.Delay(int(a.meta.NumDelivered))
		_ = a.msg.NakWithDelay(delay)
		w.metrics.outcome(a.account, "retried")
		ev.Dur("retry_in", delay).Msg("temporary failure; will retry")
	}
}

// heartbeat tells JetStream the message is still being worked on, every
// AckWait/3, until the returned stop is called.
func (w *Worker) heartbeat(ctx context.Context, msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}
