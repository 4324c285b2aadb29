package relay

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/clock"
	"relay365/internal/message"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// Tokens gives access tokens; the token service's client implements it.
type Tokens interface {
	Token(ctx context.Context, account string) (token.AccessToken, error)
	ForceRefresh(ctx context.Context, account string) (token.AccessToken, error)
	// Reload bypasses any cache: the token as stored now, with its
	// binding (asked when the account record disagrees with a cached
	// token's binding, which a new consent may have changed).
	Reload(ctx context.Context, account string) (token.AccessToken, error)
	// SMTPRefused reports that the SMTP server refused tok although a
	// forced refresh had just given it (535 5.7.3 twice): the token
	// service records that the account needs consent, with the alarm
	// (event, relay_token_state) of a refresh refused for that reason.
	SMTPRefused(ctx context.Context, account string, tok token.AccessToken) (bool, error)
	// SMTPAccepted ends that alarm once a session authenticated again.
	SMTPAccepted(ctx context.Context, account string, since time.Time) (bool, error)
}

// Accounts is the account registry as the engine uses it.
type Accounts interface {
	Get(ctx context.Context, alias string) (account.Account, error)
	Watch(ctx context.Context) (<-chan account.Change, error)
}

// TokenEvents lets a paused account learn from the token service that a
// usable token exists again (a new consent, a refresh), instead of waiting
// for its next probe. Workers never read relay_tokens themselves; the
// token service's client (*tokensvc.Client) implements it.
type TokenEvents interface {
	// WatchStored receives whenever a new usable access token is stored
	// for the account, until ctx ends.
	WatchStored(ctx context.Context, account string) (<-chan struct{}, error)
	// Usable asks whether the account has a usable token now.
	Usable(ctx context.Context, account string) (bool, error)
}

// Config tunes the engine. Zero values take the defaults.
type Config struct {
	AckWait         time.Duration // consumers' AckWait; heartbeats at a third of it; default queue.DefaultAckWait
	MaxDeliver      int           // consumers' MaxDeliver; default queue.DefaultMaxDeliver
	MaxAckPending   int           // per account consumer; default queue.DefaultMaxAckPending
	Retry           Backoff       // temporary failures; default DefaultRetry
	Pause           Backoff       // probes of a paused account; default DefaultPause
	ShutdownGrace   time.Duration // how long in-flight sends may finish after stop; default DefaultShutdownGrace
	IdleTimeout     time.Duration // idle SMTP sessions are closed after this; default 30s
	ThrottleRecover time.Duration // after a 432, concurrency climbs back one step per period; default 5m
	FetchWait       time.Duration // how long one pull waits for messages; default 5s
	IdleFetchWait   time.Duration // an idle lane's pulls wait longer, doubling up to this (lane.go); default DefaultIdleFetchWait (60s), never below FetchWait
	SweepEvery      time.Duration // how often subjects without an account are looked for; default 1s
	UnknownGrace    time.Duration // age before a message of an unknown account is dead-lettered; default 3s
	Lookahead       int           // messages a lane holds prepared beyond its sessions (lane.go); default 16, negative for none
	LookaheadBytes  int           // a lane fetches ahead only while it holds fewer bytes of messages; default 1 MiB
	QueueLifetime   time.Duration // mail older than this is dead-lettered as expired (expire.go); default queue.DefaultQueueLifetime, negative for never
	ExpiryEvery     time.Duration // how often paused lanes' expired mail is looked for; default a tenth of QueueLifetime, 1s to 1m
	BodySweepEvery  time.Duration // how often orphaned bodies are looked for (bodies.go); default DefaultBodySweepEvery
	BodyOrphanAge   time.Duration // an unnamed body older than this is deleted; default body.OrphanAge (the dedupe window)
}

// DefaultShutdownGrace is how long sends in flight may finish after the
// engine is told to stop (relay serve --shutdown-grace).
const DefaultShutdownGrace = 30 * time.Second

// DefaultBodySweepEvery is how often orphaned bodies are looked for
// (relay serve --body-sweep-every).
const DefaultBodySweepEvery = time.Hour

func (c *Config) defaults() {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setDur(&c.ShutdownGrace, DefaultShutdownGrace)
	setDur(&c.IdleTimeout, 30*time.Second)
	setDur(&c.ThrottleRecover, 5*time.Minute)
	setDur(&c.FetchWait, 5*time.Second)
	setDur(&c.IdleFetchWait, DefaultIdleFetchWait)
	c.IdleFetchWait = max(c.IdleFetchWait, c.FetchWait)
	setDur(&c.SweepEvery, time.Second)
	setDur(&c.UnknownGrace, 3*time.Second)
	setDur(&c.BodySweepEvery, DefaultBodySweepEvery)
	setDur(&c.BodyOrphanAge, body.OrphanAge)
	consumer := queue.ConsumerConfig{AckWait: c.AckWait, MaxDeliver: c.MaxDeliver, MaxAckPending: c.MaxAckPending}
	consumer.Defaults()
	c.AckWait, c.MaxDeliver, c.MaxAckPending = consumer.AckWait, consumer.MaxDeliver, consumer.MaxAckPending
	switch {
	case c.Lookahead == 0:
		c.Lookahead = DefaultLookahead
	case c.Lookahead < 0:
		c.Lookahead = 0
	}
	if c.LookaheadBytes <= 0 {
		c.LookaheadBytes = DefaultLookaheadBytes
	}
	switch {
	case c.QueueLifetime == 0:
		c.QueueLifetime = queue.DefaultQueueLifetime
	case c.QueueLifetime < 0:
		c.QueueLifetime = 0
	}
	if c.ExpiryEvery <= 0 {
		c.ExpiryEvery = min(max(c.QueueLifetime/10, time.Second), time.Minute)
	}
	if c.Retry.Base <= 0 {
		c.Retry = DefaultRetry
	}
	if c.Pause.Base <= 0 {
		c.Pause = DefaultPause
	}
}

// Deps are the engine's collaborators.
type Deps struct {
	JS          jetstream.JetStream
	Accounts    Accounts
	Tokens      Tokens
	TokenEvents TokenEvents       // optional: without it a needs_consent account is probed on the pause schedule only
	Transport   *submit.Transport // default: a Transport with default timeouts
	Registry    prometheus.Registerer
	Log         zerolog.Logger
	Clock       clock.Clock // default clock.Real()
}

// Engine delivers the MAIL stream: one lane per account, each with its own
// durable consumer, session pool, pacer budget and pause state. See the
// package documentation for the design.
type Engine struct {
	cfg      Config
	js       jetstream.JetStream
	accounts Accounts
	tokens   Tokens
	events   TokenEvents
	tr       *submit.Transport
	metrics  *Metrics
	log      zerolog.Logger
	clock    clock.Clock
	consumer queue.ConsumerConfig

	// Set by Run before any lane starts.
	pacer   *pacing.Pacer
	sent    *SentMarkers
	bodies  *body.Store
	sendCtx context.Context // in-flight SMTP work: outlives Run's ctx by ShutdownGrace

	ready chan struct{} // closed once Run watches the registry

	// retiring is the lanes of removed accounts finishing their
	// transactions (apply): shutdown waits for them as for the others.
	retiring sync.WaitGroup

	mu      sync.Mutex
	lanes   map[string]*lane
	running bool
	changed chan struct{} // closed and replaced when a lane's binding changes

	// handling is the MAIL stream sequences a handler of this process
	// owns, from its delivery to its outcome (claim, lane.handle). Per
	// engine, not per lane: an account removed and added again has two
	// lanes for a while, the old one finishing its transactions.
	hmu      sync.Mutex
	handling map[uint64]struct{}
	// ids is the message ids (account and id) a handler of this process
	// is sending, and the stream sequence that has each (claimID): two
	// stream messages with one id (a requeue or replay beside an original
	// that was never terminated) must not both read the markers before
	// either is sent.
	ids map[string]uint64
}

// NewEngine builds an engine; Run starts it.
func NewEngine(d Deps, cfg Config) *Engine {
	cfg.defaults()
	if d.Transport == nil {
		d.Transport = &submit.Transport{}
	}
	if d.Clock == nil {
		d.Clock = wall
	}
	e := &Engine{
		cfg: cfg, js: d.JS, accounts: d.Accounts, tokens: d.Tokens, events: d.TokenEvents, tr: d.Transport,
		metrics: NewMetrics(d.Registry), log: d.Log, clock: d.Clock, lanes: map[string]*lane{},
		ready: make(chan struct{}), changed: make(chan struct{}), handling: map[uint64]struct{}{}, ids: map[string]uint64{},
		consumer: queue.ConsumerConfig{AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver, MaxAckPending: cfg.MaxAckPending},
	}
	d.Registry.MustRegister(laneCollector{e})
	return e
}

// Run delivers until ctx ends. Then every lane stops pulling, in-flight
// sends get ShutdownGrace to finish and be acked, sessions quit, and Run
// returns. Messages not started stay in the stream for the next start.
func (e *Engine) Run(ctx context.Context) error {
	removed, err := queue.RemoveLegacyConsumer(ctx, e.js)
	if err != nil {
		return err
	}
	if removed {
		e.log.Warn().Str("consumer", queue.LegacyConsumer).Msg("removed the shared consumer of an earlier version; each account now has its own")
	}
	if e.pacer, err = pacing.Open(ctx, e.js, e.clock); err != nil {
		return err
	}
	if e.sent, err = OpenSentMarkers(ctx, e.js); err != nil {
		return err
	}
	if e.bodies, err = body.Open(ctx, e.js); err != nil {
		return err
	}
	changes, err := e.accounts.Watch(ctx)
	if err != nil {
		return err
	}
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	e.sendCtx = sendCtx
	e.mu.Lock()
	e.running = true
	e.mu.Unlock()
	close(e.ready)

	var bg sync.WaitGroup
	bg.Go(func() { e.sweepLoop(ctx) })
	bg.Go(func() { e.expireLoop(ctx) })
	bg.Go(func() { e.bodySweepLoop(ctx) })
	for ctx.Err() == nil {
		select {
		case c, ok := <-changes:
			if ok {
				e.apply(ctx, c)
				continue
			}
			if ctx.Err() != nil {
				break
			}
			e.log.Warn().Msg("account watch ended; watching again")
			sleepOn(ctx, wall, time.Second, nil)
			if w, err := e.accounts.Watch(ctx); err == nil {
				changes = w
			}
		case <-ctx.Done():
		}
	}

	// Shutdown: lanes stopped pulling when ctx ended; wait for their
	// in-flight sends, then cut what is left after the grace period (those
	// messages are redelivered; the markers catch any that went).
	e.mu.Lock()
	e.running = false
	lanes := make([]*lane, 0, len(e.lanes))
	for _, l := range e.lanes {
		lanes = append(lanes, l)
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		for _, l := range lanes {
			l.wait()
		}
		e.retiring.Wait()
		bg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(e.cfg.ShutdownGrace):
		e.log.Warn().Msg("shutdown grace over; cancelling sends still in flight (they will be redelivered)")
		cancelSends()
		<-done
	}
	// Every lane's idle sessions at once: each QUIT waits up to 2 s for
	// a reply that an Office 365 gone dark never sends, and lanes closed
	// one after another would add that for every account with an idle
	// session (40 of them outlast a supervisor's 60 s).
	var closing sync.WaitGroup
	for _, l := range lanes {
		closing.Go(l.pool.Close)
	}
	closing.Wait()
	return nil
}

// apply starts, updates or stops a lane for one registry change.
func (e *Engine) apply(ctx context.Context, c account.Change) {
	if c.Err != nil {
		e.log.Error().Err(c.Err).Str("account", c.Alias).Msg("account record unreadable; its mail waits")
		return
	}
	e.mu.Lock()
	l := e.lanes[c.Alias]
	switch {
	case c.Deleted && l != nil:
		delete(e.lanes, c.Alias)
		e.mu.Unlock()
		l.stop()
		e.retiring.Go(func() {
			l.wait()
			l.pool.Close()
			// An account added again while this lane finished has a new
			// lane on the same durable consumer: deleting it would take
			// the new lane's messages in flight back to the stream (the
			// consumer made anew hands them out again) and its metric
			// series with it. A re-add after this check meets a deleted
			// consumer, binds it again, and one handler per stream
			// message (Engine.claim) keeps that from sending twice.
			if e.hasLane(c.Alias) {
				e.log.Info().Str("account", c.Alias).Msg("account added again before its removal ended; its consumer is kept")
				return
			}
			e.metrics.forget(c.Alias)
			// On the send context: a stop waits for this too, up to the
			// grace.
			e.dropConsumer(e.sendCtx, c.Alias)
		})
		e.log.Info().Str("account", c.Alias).Msg("account removed: delivery stopped; queued mail is dead-lettered as unknown account")
		return
	case c.Deleted:
	case l != nil:
		l.setAccount(c.Account)
	default:
		l = newLane(ctx, e, c.Account)
		e.lanes[c.Alias] = l
		close(e.changed)
		e.changed = make(chan struct{})
		go l.run()
		e.log.Info().Str("account", c.Alias).Str("mailbox", c.Account.Mailbox).Msg("account delivery started")
	}
	e.mu.Unlock()
}

func (e *Engine) hasLane(alias string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.lanes[alias]
	return ok
}

// pauseTenant pauses every account of from's tenant: Microsoft blocked
// the tenant or its outbound IP, or its external recipient limit is
// reached, so its other mailboxes would meet the same reply. Accounts are
// matched by account.Account.SameTenant: the tenant ID learnt at sign-in,
// the same whichever name each account's tenant is configured by; for
// an account without one, its tenant as configured.
func (e *Engine) pauseTenant(from account.Account, class Class, err error) {
	if key, _ := from.TenantKey(); key == "" {
		// organizations, common or consumers and no tenant ID: not a
		// tenant, accounts of unrelated organisations may share it.
		// The account that met the reply paused itself; the others
		// find a block of their own with their own mail.
		return
	}
	e.mu.Lock()
	var same []*lane
	for _, l := range e.lanes {
		if from.SameTenant(l.account()) {
			same = append(same, l)
		}
	}
	e.mu.Unlock()
	for _, l := range same {
		l.pause(class, err, 0, false)
	}
}

// tenantNote says, for the status and the log of a tenant-wide pause, which
// tenant key the account's pause and its siblings' were matched by
// (account.Account.TenantKey), and what that leaves out.
func tenantNote(a account.Account) string {
	switch key, byID := a.TenantKey(); {
	case byID:
		return fmt.Sprintf("tenant ID %s (learnt at sign-in): every account of the tenant pauses, whichever name its tenant is configured by, and those without a tenant ID configured with the same tenant %q", key, strings.ToLower(a.Tenant))
	case key != "":
		return fmt.Sprintf("tenant %q as configured (no tenant ID learnt at sign-in): accounts that name this tenant otherwise (its ID or another domain) do not pause with it; authtool login again learns the ID", key)
	case a.TenantID == account.ConsumerTenantID || strings.EqualFold(a.Tenant, account.ConsumerTenantID):
		return fmt.Sprintf("none: tenant ID %s is the one every personal Microsoft account shares, not one organisation's: this account paused alone", account.ConsumerTenantID)
	default:
		return fmt.Sprintf("none: tenant %q names no one tenant and no tenant ID was learnt at sign-in: this account paused alone", a.Tenant)
	}
}

// LaneStatus is one account's delivery state, for /status and tests. It
// holds no secret.
type LaneStatus struct {
	Account     string `json:"account"`
	Bound       bool   `json:"consumer_bound"`
	Paused      bool   `json:"paused"`
	PauseClass  string `json:"pause_class,omitempty"`
	PauseReason string `json:"pause_reason,omitempty"`
	PauseRemedy string `json:"pause_remedy,omitempty"` // what a person does about an SMTP reply that paused it (submit.Remedy)
	// PauseTenant is, for a tenant-wide pause (class tenant), the tenant
	// key its accounts were matched by and how it was found (tenantNote).
	PauseTenant string    `json:"pause_tenant,omitempty"`
	PausedUntil time.Time `json:"next_probe,omitzero"`
	ConnLimit   int       `json:"connection_limit"`
	InFlight    int       `json:"in_flight"` // messages fetched and not yet accepted: sending, or prepared and waiting for a session
	Sessions    int       `json:"sessions"`
	// RcptLimit is the most recipients the server took in one message
	// before answering 452 4.5.3 (the tenant's recipient limit): the
	// account's messages go in batches of that many. 0 when none came.
	RcptLimit int `json:"recipient_limit,omitempty"`
}

// Status lists the lanes, sorted by account.
func (e *Engine) Status() []LaneStatus {
	e.mu.Lock()
	lanes := make([]*lane, 0, len(e.lanes))
	for _, l := range e.lanes {
		lanes = append(lanes, l)
	}
	e.mu.Unlock()
	out := make([]LaneStatus, 0, len(lanes))
	for _, l := range lanes {
		out = append(out, l.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Account < out[j].Account })
	return out
}

// Ready is closed once Run has removed the legacy consumer, opened its
// buckets and watches the registry.
func (e *Engine) Ready() <-chan struct{} { return e.ready }

// WaitBound waits until the account's lane has bound its consumer.
func (e *Engine) WaitBound(ctx context.Context, alias string) error {
	for {
		e.mu.Lock()
		l, ch := e.lanes[alias], e.changed
		e.mu.Unlock()
		if l != nil && l.status().Bound {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("account %s: consumer not bound: %w", alias, ctx.Err())
		}
	}
}

// laneChanged wakes WaitBound.
func (e *Engine) laneChanged() {
	e.mu.Lock()
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

// Running reports whether Run is between start-up and shutdown.
func (e *Engine) Running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running
}

// unknownAccount is the reason a message for no registered account is
// dead-lettered with.
func unknownAccount(alias string) error {
	return &message.Invalid{Field: "account", Reason: fmt.Sprintf("unknown account %q (add it with authtool login)", alias)}
}
