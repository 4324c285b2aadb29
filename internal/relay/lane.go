package relay

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/message"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// maxHold is the longest a fetched message waits for the pacer before the
// account pauses instead (it covers the per-minute window; heartbeats keep
// the message ours meanwhile).
const maxHold = 90 * time.Second

// maxFirstSeen bounds the per-lane memory of first attempt times.
const maxFirstSeen = 10000

// Lookahead: a lane holds up to Config.Lookahead messages beyond its sessions,
// fetched, decoded, rendered, their markers read and pacing reserved,
// waiting (heartbeats running) for the next free session. Preparing a
// message costs NATS round trips (the fetch, the marker lookup beside the
// pacing reservation) that take longer than its pipelined SMTP
// transaction; without messages ready, a session that finished a
// transaction sat idle through them. With one message ready the chain
// was still the preparation's; with several they overlap one another,
// and one fetch brings several messages. Measured with `relay bench`
// (one connection, sync 2m): ratio to the ceiling 0.45 without, 0.65
// with 1, 0.81 with 4, 0.95 with 8, 1.19 with 16 (BENCHMARKS.md).
//
// Messages that wait are bounded twice: by count, and by the bytes the
// lane holds (Config.LookaheadBytes, per lane), so a burst of large
// messages waits in the stream, not in memory. A fetch for free sessions
// has no byte limit (a free session always takes the next message,
// whatever its size); a fetch for the lookahead asks the server for at
// most the bytes left, and a message that does not fit stays in the
// stream for a session. A prepared message is in memory about three
// times (its JSON, the decoded message, the rendered MIME), so a lane's
// waiting messages take at most about 3 MiB, and an idle lane none.
// A lookahead fetch also leaves the pacer's room to the messages already
// held (they may not have reserved yet), and a lane pauses for a spent
// day's budget only when none of its own messages holds part of it.
// docs/design.md §7 asks to pull about what the workers can start and to
// heartbeat what waits: a waiting message is at most Lookahead/limit
// transactions (milliseconds) from its turn, and its heartbeat runs from
// the fetch.
const (
	DefaultLookahead      = 16
	DefaultLookaheadBytes = 1 << 20
)

// DefaultIdleFetchWait is how long an idle lane's pull waits at most.
// Each empty pull doubles the next one's wait, from FetchWait up to
// Config.IdleFetchWait; a pull that brings a message resets it. A pull
// that waits costs nothing but its open request (the server delivers a
// message the moment it is stored, into the waiting pull), while every
// pull that expires costs a request, an expiry status and the pacer's
// peek: 2,000 idle lanes at 5s made 400 of each a second and 16 % of a
// core; at 30s relay serve idled at 5.4 % of a core, at 60s 2.2 %
// (BENCHMARKS.md, "Many mailboxes"). A pause ends the open pull at once
// (lane.pause), so a paused account's messages are not fetched only to
// go back. Pulls of 10s or more carry idle heartbeats at a third of
// their wait, so a lost pull (the server restarted, the consumer
// deleted, the connection lost) is still noticed within the wait.
// relay bench --accounts waits for idle pulls to lengthen to this
// (bench.DefaultAccountsSettle).
const DefaultIdleFetchWait = 60 * time.Second

// lane delivers one account's mail: its durable consumer, session pool,
// concurrency limit and pause state. Its loop pulls what it may start now
// and the lookahead: free connection slots plus up to Lookahead prepared
// messages, within the pacer's room; one probe message while paused,
// nothing at all while paused otherwise.
type lane struct {
	e        *Engine
	alias    string
	log      zerolog.Logger
	ctx      context.Context // stops pulling and waiting (shutdown, account removed)
	cancel   context.CancelFunc
	pool     *submit.Pool
	handlers sync.WaitGroup
	done     chan struct{} // closed when the loop has returned
	wake     chan struct{} // a slot freed, the account changed, a pause ended

	// smtpRefused is the issued time of a token the token service was
	// told the SMTP server refused after a forced refresh (zero: none);
	// the next session that authenticates clears the alarm (lane.session).
	smtpRefused atomic.Pointer[time.Time]
	// authenticated is set at the lane's first session that
	// authenticated: that one tells the token service too, whoever
	// reported its token refused (lane.session).
	authenticated atomic.Bool

	mu        sync.Mutex
	acct      account.Account
	limit     int           // connections now (≤ acct.MaxConns; lowered after 432)
	throttled time.Time     // last 432; zero when the limit is back to MaxConns
	connFails int           // sessions refused in a row before any message was named (sessionRefused)
	connHold  time.Time     // wall clock: no message takes a session before it (zero: none)
	inflight  int           // slots taken by an open fetch or a message not yet past its last 250 (≤ limit+Lookahead)
	sending   int           // of those, the ones that may hold a session (≤ limit)
	msgs      int           // fetched messages not yet past their last 250 (the status's InFlight)
	queue     []*slot       // those waiting for a session, in fetch order
	gen       uint64        // bumped by every account change: messages prepared before it are prepared again
	preparing int           // fetched messages that have not reserved their pacing yet
	dayHold   time.Duration // a message found the day's budget spent while others held part of it: fetch nothing, pause when they are done
	heldBytes int           // data of the messages in flight
	aheadFull bool          // a lookahead fetch came back short: the next waits for a slot
	freed     chan struct{} // closed, and replaced, when a sending slot frees
	bound     bool
	endFetch  context.CancelFunc // ends the open pull (a pause); nil when none is open
	p         pauseState
	firstSeen map[uint64]time.Time // stream seq → first attempt seen here
	lastFail  map[uint64]string    // stream seq → the last failure seen here (a reply, or the error), for an expiry
	unknown   map[string]bool      // JSON field names already logged as unknown

	// rcptLimit is the most recipients the server took in one
	// transaction before a 452 4.5.3 (learnRcptLimit); 0 until one.
	rcptLimit atomic.Int32

	unbound sync.Once // warns once about tokens without a binding
	// rebound is closed, and replaced, when the account's smtp_addr,
	// ca_file or client_id change (a session waiting to see whether a
	// consent's account write follows its token write).
	rebound chan struct{}
}

// pauseState is why and until when an account does not send.
type pauseState struct {
	on       bool
	since    time.Time // on the engine's clock
	class    Class
	reason   string
	remedy   string    // what a person does about it (submit.Remedy), "" when the error says nothing of it
	tenant   string    // class tenant: the tenant key the pause was matched by (tenantNote)
	until    time.Time // on the engine's clock: next probe
	count    int       // pauses since the last resume, for the probe schedule
	kind     probe
	armed    bool               // probeSend: one message may be fetched
	probeOut bool               // the probe message is in flight
	unwatch  context.CancelFunc // stops the token record watch
}

func newLane(parent context.Context, e *Engine, a account.Account) *lane {
	ctx, cancel := context.WithCancel(parent)
	l := &lane{
		e: e, alias: a.Alias, ctx: ctx, cancel: cancel,
		log:  e.log.With().Str("account", a.Alias).Logger(),
		done: make(chan struct{}), wake: make(chan struct{}, 1),
		firstSeen: map[uint64]time.Time{}, freed: make(chan struct{}), rebound: make(chan struct{}),
	}
	l.pool = submit.NewPool(e.tr, e.cfg.IdleTimeout, func(s *submit.Session) {
		e.metrics.connections.WithLabelValues(a.Alias).Inc()
		l.sessionOpened()
		l.log.Debug().Bool("pipelining", s.Pipelining()).Msg("SMTP session opened (STARTTLS, AUTH XOAUTH2)")
	})
	e.metrics.setPaused(a.Alias, "")
	e.metrics.lane(a.Alias)
	l.setAccount(a)
	return l
}

func (l *lane) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *lane) account() account.Account {
	a, _ := l.accountGen()
	return a
}

// accountRebound is the account and a channel closed when its binding
// fields (smtp_addr, ca_file, client_id) change.
func (l *lane) accountRebound() (account.Account, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acct, l.rebound
}

// accountGen is the account and its generation, which a message prepared
// with it must still find when its session comes.
func (l *lane) accountGen() (account.Account, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acct, l.gen
}

// inFlight is the number of messages fetched and not yet past their last
// 250.
func (l *lane) inFlight() int {
	held, _ := l.counts()
	return held
}

// counts is the messages in flight, and of those the ones still to reserve.
func (l *lane) counts() (held, preparing int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msgs, l.preparing
}

// holdForDay: a message found the day's budget spent while other messages
// of the lane held part of it. The lane fetches nothing more; when the
// last of them is done it pauses for the longest such wait (dayPause), so
// the pause is measured with their reservations settled, not given back.
func (l *lane) holdForDay(wait time.Duration) {
	l.mu.Lock()
	l.dayHold = max(l.dayHold, wait)
	l.mu.Unlock()
}

// dayPause returns and clears the day hold once no message is in flight.
func (l *lane) dayPause() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dayHold == 0 || l.msgs > 0 {
		return 0
	}
	d := l.dayHold
	l.dayHold = 0
	return d
}

// pausedNow reports whether the lane is paused (its messages wait for the
// account).
func (l *lane) pausedNow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.on
}

// othersInFlight says whether messages besides the caller's are fetched
// and not yet past their last 250.
func (l *lane) othersInFlight() bool { return l.inFlight() > 1 }

// wakeWaitersLocked wakes the messages waiting for a session, to look
// again: a session freed, the limit rose, the account paused or changed.
func (l *lane) wakeWaitersLocked() {
	close(l.freed)
	l.freed = make(chan struct{})
}

// setAccount applies a registry change: endpoint, mailbox, limits. A
// change of the endpoint or client id of an account paused for its
// configuration (a binding mismatch, a certificate that does not verify),
// or of the limits of one paused for its quota, is probed at once: it may
// be the fix.
func (l *lane) setAccount(a account.Account) {
	a.Normalize() // defaults for records written by older versions
	l.mu.Lock()
	if !samePreparation(l.acct, a) {
		l.gen++
		l.wakeWaitersLocked()
	}
	if token.BindingOf(l.acct) != token.BindingOf(a) {
		close(l.rebound)
		l.rebound = make(chan struct{})
		if l.p.on && !l.p.armed && l.p.class == submit.ClassConfig {
			l.p.until = l.e.clock.Now()
		}
	}
	if limits(l.acct) != limits(a) && l.p.on && !l.p.armed && l.p.class == submit.ClassQuota {
		// New limits (authtool login --per-day): the budget the pause
		// waits for may be there now; a probe finds out.
		l.p.until = l.e.clock.Now()
	}
	l.acct = a
	if l.throttled.IsZero() || l.limit > a.MaxConns || l.limit < 1 {
		l.limit = a.MaxConns
	}
	l.pool.Configure(submit.Endpoint{Addr: a.SMTPAddr, CAFile: a.CAFile}, a.Mailbox, l.limit)
	l.mu.Unlock()
	l.signal()
}

// samePreparation says whether a message prepared (rendered, paced) for
// account a can still be sent for b: the same mailbox, sender policy and
// limits. A watch may deliver the same record again, and most edits
// (connections, scopes, endpoints) leave prepared messages valid.
func samePreparation(a, b account.Account) bool {
	return a.Mailbox == b.Mailbox && a.FromPolicy == b.FromPolicy && slices.Equal(a.SendAs, b.SendAs) &&
		a.PerMinute == b.PerMinute && a.PerDay == b.PerDay
}

func limits(a account.Account) pacing.Limits {
	return pacing.Limits{PerMinute: a.PerMinute, PerDay: a.PerDay}
}

// batchSize is the most recipients one transaction of the account takes:
// Office 365's 500, or less if the whole day's budget is less, or less
// again if the server answered 452 4.5.3 sooner (learnRcptLimit).
func (l *lane) batchSize(a account.Account) int {
	n := message.RecipientsPerTransaction
	if a.PerDay > 0 {
		n = min(n, a.PerDay)
	}
	if lim := int(l.rcptLimit.Load()); lim > 0 {
		n = min(n, lim)
	}
	return n
}

// learnRcptLimit lowers the lane's batch size to n, the recipients the
// server took before it answered that a transaction had too many
// (submit.SMTPError.RecipientLimit). A tenant's administrator may set
// its recipient limit below Office 365's 500; RFC 5321 §4.5.3.1.10 has
// the client send the rest in later transactions, so the account's
// messages go in batches of n from now on. The limit is kept until the
// relay restarts (a tenant may raise it again), when one transaction
// learns it anew.
func (l *lane) learnRcptLimit(n int, log zerolog.Logger) {
	for {
		cur := l.rcptLimit.Load()
		if cur != 0 && int(cur) <= n {
			return
		}
		if l.rcptLimit.CompareAndSwap(cur, int32(n)) {
			log.Warn().Int("recipients", n).Msg("the server takes no more recipients in one message (452 4.5.3): this account's messages now go in batches of that many until the relay restarts")
			return
		}
	}
}

func (l *lane) stop() { l.cancel() }

// wait returns when the loop and every handler have finished.
func (l *lane) wait() {
	<-l.done
	l.handlers.Wait()
}

// run is the lane's loop.
func (l *lane) run() {
	defer close(l.done)
	cons := l.bind()
	fetchWait := l.e.cfg.FetchWait // grows while pulls come back empty (DefaultIdleFetchWait)
	for cons != nil && l.ctx.Err() == nil {
		if !l.waitReady() {
			return
		}
		if d := l.dayPause(); d > 0 {
			l.pause(submit.ClassQuota, &PaceError{Wait: d, Reason: "the mailbox's daily recipient budget is spent"}, d, false)
			continue
		}
		n, maxBytes, probe := l.take()
		if n == 0 {
			sleepOn(l.ctx, wall, time.Minute, l.wake)
			continue
		}
		acct := l.account()
		allow, wait, err := l.e.pacer.Peek(l.ctx, acct.Mailbox, limits(acct))
		held, preparing := l.counts()
		room := allow
		if maxBytes > 0 {
			// A lookahead fetch: the messages held that have not
			// reserved yet will take the pacer's room first.
			room -= preparing
		}
		switch {
		case err != nil:
			l.give(n, probe)
			if l.ctx.Err() == nil {
				l.log.Warn().Err(err).Msg("pacing state unreadable; trying again")
				sleepOn(l.ctx, wall, time.Second, nil)
			}
			continue
		case room <= 0:
			l.give(n, probe)
			switch {
			case allow == 0 && wait > maxHold && held == 0:
				// The day's budget is spent and none of it is held by
				// a message of this lane that may yet give it back. A
				// probe finding no room extends the pause it probes.
				l.pause(submit.ClassQuota, &PaceError{Wait: wait, Reason: "the mailbox's daily recipient budget is spent"}, wait, probe)
			case allow == 0 && wait <= maxHold:
				sleepOn(l.ctx, l.e.clock, wait, l.wake)
			default:
				sleepOn(l.ctx, wall, time.Minute, l.wake) // until a message of this lane ends
			}
			continue
		case room < n:
			l.give(n-room, false)
			n = room
		}
		fctx, cancel := context.WithTimeout(l.ctx, fetchWait)
		opts := []jetstream.FetchOpt{jetstream.FetchContext(fctx)}
		if fetchWait >= 10*time.Second {
			opts = append(opts, jetstream.FetchHeartbeat(fetchWait/3))
		}
		if maxBytes > 0 {
			opts = append(opts, jetstream.FetchMaxBytes(maxBytes))
		}
		if !l.setFetch(cancel) {
			cancel() // paused since take: no pull
			l.give(n, probe)
			continue
		}
		batch, err := cons.Fetch(n, opts...)
		if err != nil {
			l.setFetch(nil)
			cancel()
			l.give(n, probe)
			if l.ctx.Err() == nil {
				l.log.Warn().Err(err).Msg("fetch failed; binding the consumer again")
				l.setBound(false)
				cons = l.bind()
			}
			continue
		}
		started := 0
		for msg := range batch.Messages() {
			started++
			l.start(msg, probe)
		}
		l.setFetch(nil)
		cancel()
		if started > 0 {
			fetchWait = l.e.cfg.FetchWait
		} else {
			fetchWait = min(2*fetchWait, l.e.cfg.IdleFetchWait)
		}
		if err := batch.Error(); err != nil && l.ctx.Err() == nil && !isFetchTimeout(err) {
			l.log.Warn().Err(err).Msg("fetch ended with an error; binding the consumer again")
			l.setBound(false)
			cons = l.bind()
		}
		if started < n {
			// A lookahead fetch that came back short may have met a
			// message over its byte budget: the next lookahead fetch
			// waits for a slot to free (a free session takes any size).
			l.giveShort(n-started, probe && started == 0, maxBytes > 0)
		}
	}
}

// setFetch records the open pull's cancel (nil: none open). It refuses
// one while the lane is paused without a probe to make, which take allowed
// before the pause began.
func (l *lane) setFetch(cancel context.CancelFunc) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cancel != nil && l.p.on && !l.p.armed {
		return false
	}
	l.endFetch = cancel
	return true
}

func isFetchTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, jetstream.ErrNoMessages)
}

// bind creates or updates the account's consumer, retrying (a sweeper's
// temporary consumer on the same subject, or NATS restarting) until it
// works or the lane stops.
func (l *lane) bind() jetstream.Consumer {
	for attempt := 1; ; attempt++ {
		cons, err := queue.EnsureAccountConsumer(l.ctx, l.e.js, l.alias, l.e.consumer)
		if err == nil {
			l.setBound(true)
			return cons
		}
		if l.ctx.Err() != nil {
			return nil
		}
		ev := l.log.Debug()
		if attempt%10 == 3 {
			ev = l.log.Warn()
		}
		ev.Err(err).Int("attempt", attempt).Msg("consumer not bound yet; retrying")
		sleepOn(l.ctx, wall, min(time.Duration(attempt)*100*time.Millisecond, 5*time.Second), nil)
	}
}

func (l *lane) setBound(b bool) {
	l.mu.Lock()
	l.bound = b
	l.mu.Unlock()
	l.e.laneChanged()
}

// take reserves the slots the next fetch may fill: free sessions (any
// message size), else the lookahead within its byte budget (maxBytes > 0),
// or one probe message while paused.
func (l *lane) take() (n, maxBytes int, probe bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.p.on && l.p.armed && !l.p.probeOut && l.inflight == 0:
		l.p.probeOut = true
		n, probe = 1, true
	case l.p.on, l.dayHold > 0:
		return 0, 0, false
	case l.inflight < l.limit:
		n = l.limit - l.inflight
	case l.e.cfg.Lookahead > 0 && !l.aheadFull && l.heldBytes < l.e.cfg.LookaheadBytes:
		n, maxBytes = l.limit+l.e.cfg.Lookahead-l.inflight, l.e.cfg.LookaheadBytes-l.heldBytes
		if n < refill(l.e.cfg.Lookahead) {
			n, maxBytes = 0, 0
		}
	}
	if n < 0 {
		n = 0
	}
	l.inflight += n
	return n, maxBytes, probe
}

// refill is how many lookahead slots must be free before a lookahead
// fetch: every session is busy and the lane still holds prepared messages,
// so it tops the lookahead up in groups rather than a message at a time.
// A group's pacing reservations go out together and share one write
// (Pacer group commit), and it takes one pull request instead of one a
// message.
func refill(lookahead int) int { return max(1, lookahead/2) }

// give returns slots; probeUnused says the probe slot found no message.
func (l *lane) give(n int, probeUnused bool) { l.giveShort(n, probeUnused, false) }

// giveShort returns slots a fetch did not fill; aheadShort says it was a
// lookahead fetch, which then waits for a slot to free.
func (l *lane) giveShort(n int, probeUnused, aheadShort bool) {
	l.mu.Lock()
	l.inflight -= n
	if probeUnused {
		l.p.probeOut = false
	}
	if aheadShort {
		l.aheadFull = true
	}
	l.mu.Unlock()
	// No signal: only the loop gives slots back, and waking itself would
	// turn its next wait (for the pacer, for a slot) into a spin.
}

func (l *lane) start(msg jetstream.Msg, probe bool) {
	l.handlers.Add(1)
	sl := &slot{l: l, bytes: len(msg.Data())}
	l.mu.Lock()
	l.heldBytes += sl.bytes
	l.msgs++
	l.preparing++
	l.queue = append(l.queue, sl)
	l.mu.Unlock()
	go func() {
		defer l.handlers.Done()
		defer sl.release()
		l.handle(msg, probe, sl)
	}()
}

// slot is one fetched message's claim on its lane: counted in inflight
// from the fetch, in the lane's queue until it may take a session, then
// in sending. It is given back as soon as the last batch is accepted and
// the session is back in the pool, so the next message is sent while this
// one's marker and ack are written, or at the end of the handler
// whatever happened. Only the handler's goroutine uses a slot.
type slot struct {
	l        *lane
	bytes    int // the message's data, counted in the lane's held bytes
	prepared bool
	sending  bool
	done     bool
}

// setPrepared says the message has reserved its pacing (or needs none);
// the lane's lookahead fetches no longer leave room for it.
func (s *slot) setPrepared() {
	s.l.mu.Lock()
	s.preparedLocked()
	s.l.mu.Unlock()
}

func (s *slot) preparedLocked() {
	if !s.prepared {
		s.prepared = true
		s.l.preparing--
	}
}

// acquire waits until the message may take a session: fewer than limit of
// the lane's messages hold one, and the messages fetched before it that
// still wait fill none of the free ones (sessions go in fetch order, so
// one connection sends in stream order, as without the lookahead). It
// fails with errStopping when the lane stops, with errAccountChanged when
// the account changed since the message was prepared with it (gen), and,
// for anything but the probe, with errPausedAhead when the account paused
// while it waited.
func (s *slot) acquire(probe bool, gen uint64) error {
	l := s.l
	for !s.sending {
		l.mu.Lock()
		switch {
		case l.ctx.Err() != nil:
			l.mu.Unlock()
			return errStopping
		case l.gen != gen:
			l.mu.Unlock()
			return errAccountChanged
		case l.p.on && !probe:
			l.mu.Unlock()
			return errPausedAhead
		case !probe && time.Now().Before(l.connHold):
			// Sessions are being refused (sessionRefused): wait out
			// the hold, heartbeated, instead of dialling again.
			freed, hold := l.freed, time.Until(l.connHold)
			l.mu.Unlock()
			if !sleepOn(l.ctx, wall, hold, freed) {
				return errStopping
			}
			continue
		case probe || l.sending+slices.Index(l.queue, s) < l.limit:
			l.sending++
			s.sending = true
			l.queue = slices.DeleteFunc(l.queue, func(q *slot) bool { return q == s })
			l.mu.Unlock()
			return nil
		}
		freed := l.freed
		l.mu.Unlock()
		select {
		case <-freed:
		case <-l.ctx.Done():
			return errStopping
		}
	}
	return nil
}

// release gives the slot back; more calls do nothing.
func (s *slot) release() {
	if s.done {
		return
	}
	s.done = true
	l := s.l
	l.mu.Lock()
	l.inflight--
	l.msgs--
	l.heldBytes -= s.bytes
	s.preparedLocked()
	l.aheadFull = false
	if s.sending {
		l.sending--
	} else {
		// Finished without a session (a duplicate, a refusal before
		// sending): the messages behind it move up.
		l.queue = slices.DeleteFunc(l.queue, func(q *slot) bool { return q == s })
	}
	l.wakeWaitersLocked()
	l.mu.Unlock()
	l.signal()
}

// waitReady returns when the lane may pull (not paused, or a probe message
// is allowed), running the due probes; false when the lane stops.
func (l *lane) waitReady() bool {
	for l.ctx.Err() == nil {
		l.mu.Lock()
		p := l.p
		l.mu.Unlock()
		if !p.on || p.armed {
			return true
		}
		if d := p.until.Sub(l.e.clock.Now()); d > 0 {
			sleepOn(l.ctx, l.e.clock, d, l.wake)
			continue
		}
		switch p.kind {
		case probeNone:
			l.resume("the wait is over")
		case probeToken:
			if _, err := l.e.tokens.Token(l.ctx, l.alias); err != nil {
				l.pause(ClassIdentity, err, pauseHint(err), true)
			} else {
				l.resume("an access token is available again")
			}
		case probeAuth:
			if err := l.probeSession(); err != nil {
				class, _ := classify(err)
				l.pause(class, err, pauseHint(err), true)
			} else {
				l.resume("a session authenticated again")
			}
		case probeSend:
			l.mu.Lock()
			l.p.armed = true
			l.mu.Unlock()
		}
	}
	return false
}

// probeSession opens a session (STARTTLS + AUTH, with the one forced
// refresh on 535 5.7.3) and keeps it in the pool.
func (l *lane) probeSession() error {
	s, err := l.session(l.ctx, l.log)
	if err != nil {
		return err
	}
	l.pool.Put(s)
	return nil
}

// pause stops the lane's pulling because the account cannot send. A lane
// already paused ignores further reports of in-flight messages (they met
// the same condition); a failed probe (fromProbe) extends the pause on the
// probe schedule. hint is a wait the condition itself announced.
func (l *lane) pause(class Class, err error, hint time.Duration, fromProbe bool) {
	now := l.e.clock.Now()
	remedy, tenant := "", ""
	var se *submit.SMTPError
	if errors.As(err, &se) {
		remedy = submit.Remedy(se, l.account().Mailbox) // before l.mu: account takes it
	}
	if class == submit.ClassTenant {
		tenant = tenantNote(l.account())
	}
	l.mu.Lock()
	if l.p.on && !fromProbe {
		l.mu.Unlock()
		return
	}
	p := pauseState{on: true, since: l.p.since, class: class, reason: err.Error(), remedy: remedy, tenant: tenant, count: l.p.count + 1, kind: probeFor(class), unwatch: l.p.unwatch}
	if !l.p.on {
		p.since = now
	}
	var pe *PaceError
	switch {
	case errors.As(err, &pe):
		p.kind = probeNone // the pacer's own window: no need to ask Office 365
		p.until = now.Add(pe.Wait)
	case class == submit.ClassQuota && se != nil && hint > 0:
		// Office 365's day quota: the probe goes when the window has
		// room (quotaWait), sooner or later than the probe schedule.
		p.until = now.Add(hint)
	default:
		p.until = now.Add(max(hint, l.e.cfg.Pause.Delay(p.count)))
	}
	watch := p.unwatch == nil && l.e.events != nil && (p.kind == probeToken || p.kind == probeAuth)
	if watch {
		var wctx context.Context
		wctx, p.unwatch = context.WithCancel(l.ctx)
		go l.watchTokens(wctx, p.kind)
	}
	l.p = p
	l.wakeWaitersLocked() // messages waiting for a session go back
	if l.endFetch != nil && !fromProbe {
		// The open pull would only bring messages that go back: end it
		// (the server drops a pull whose inbox is gone). A probe's own
		// pull ends with its message.
		l.endFetch()
		l.endFetch = nil
	}
	l.mu.Unlock()

	l.e.metrics.setPaused(l.alias, class) // a probe may find another cause
	l.e.metrics.pauses.WithLabelValues(l.alias, string(class)).Inc()
	ev := l.log.Warn().Str("class", string(class)).Err(err).Time("next_probe", p.until)
	if se != nil {
		ev = ev.Int("smtp_code", se.Code).Str("remedy", p.remedy)
	}
	if p.tenant != "" {
		ev = ev.Str("tenant_key", p.tenant)
	}
	ev.Msg("account paused: its mail stays queued")
}

// quotaWait is how long an account that Office 365 refused for its day's
// recipient limit waits before its probe: until the oldest recipients the
// pacer counts for the mailbox have left the rolling 24 hours
// (pacing.Pacer.DayRoom: before then the window Office 365 counts is as
// full as when it refused, unless mail sent by other means left it),
// plus a jitter of up to the probe schedule's (Config.Pause: its Jitter
// of at most its Max), so that accounts refused together do not probe
// together, and never more than pacing.MaxDayRoom, whatever the record
// says. 0 when the record counts nothing or cannot be read: the probe
// schedule decides, as for any pause.
func (l *lane) quotaWait() time.Duration {
	d, ok, err := l.e.pacer.DayRoom(l.ctx, l.account().Mailbox)
	if err != nil || !ok {
		if err != nil {
			l.log.Warn().Err(err).Msg("pacing state unreadable; the quota pause probes on the pause schedule")
		}
		return 0
	}
	jitter := time.Duration(rand.Float64() * l.e.cfg.Pause.Jitter * float64(min(d, l.e.cfg.Pause.Max)))
	return min(d+jitter, pacing.MaxDayRoom)
}

// watchTokens ends a token or authentication pause as soon as the token
// service announces a new usable token for the account (a new consent, a
// refresh), instead of waiting for the next scheduled probe.
func (l *lane) watchTokens(ctx context.Context, kind probe) {
	var stored <-chan struct{}
	for ctx.Err() == nil {
		var err error
		if stored, err = l.e.events.WatchStored(ctx, l.alias); err == nil {
			break
		}
		l.log.Debug().Err(err).Msg("cannot watch for new tokens; retrying")
		sleepOn(ctx, wall, time.Second, nil)
	}
	if kind == probeToken {
		// A consent may have landed between the failure and the watch.
		if ok, err := l.e.events.Usable(ctx, l.alias); err == nil && ok {
			l.probeNow()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-stored:
			l.probeNow()
		}
	}
}

// probeNow moves the next probe to now.
func (l *lane) probeNow() {
	l.mu.Lock()
	if l.p.on && !l.p.armed {
		l.p.until = l.e.clock.Now()
	}
	l.mu.Unlock()
	l.signal()
}

// resume ends a pause.
func (l *lane) resume(why string) {
	l.mu.Lock()
	was := l.p
	if was.unwatch != nil {
		was.unwatch()
	}
	l.p = pauseState{}
	l.mu.Unlock()
	if was.on {
		l.e.metrics.setPaused(l.alias, "")
		l.log.Info().Str("class", string(was.class)).Str("why", why).Msg("account resumed")
	}
	l.signal()
}

// sent ends a pause when a message that started after the pause began went
// through: whatever held the account has cleared. (A message fetched
// before the pause, or by a fetch still open when it began, is not tried:
// it goes back to the stream when it would take a session,
// errPausedAhead. One already in its transaction may go through.)
func (l *lane) sent(started time.Time, probe bool) {
	l.mu.Lock()
	clears := l.p.on && (probe || !started.Before(l.p.since))
	l.mu.Unlock()
	if clears {
		l.resume("a message went through")
	}
}

// probeDone: the probe message ended without deciding (retried or
// dead-lettered for a reason of its own); the next message probes.
func (l *lane) probeDone() {
	l.mu.Lock()
	l.p.probeOut = false
	l.mu.Unlock()
	l.signal()
}

// sessionRefused: a session could not be opened (a refusal or failure
// at the connection, STARTTLS or AUTH, before any message was named).
// Each message is retried on its own schedule, but without a hold the
// lane took the next queued message at once and dialled again: a backlog
// of thousands, throttled or refused by Office 365 at every session, was
// a connection per message, as fast as they failed. No message of the
// lane takes a session until the hold ends: the retry schedule, by
// refusals in a row (a refusal during the hold, from a session dialled
// before it, does not lengthen it). A session opened ends it.
func (l *lane) sessionRefused(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Before(l.connHold) {
		return
	}
	l.connFails++
	d := l.e.cfg.Retry.Delay(l.connFails)
	l.connHold = now.Add(d)
	l.log.Warn().Err(err).Int("refused_in_a_row", l.connFails).Dur("hold_ms", d).Msg("SMTP session refused: no message of this account takes a session until the hold ends")
}

// sessionOpened ends a hold (sessionRefused).
func (l *lane) sessionOpened() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.connFails == 0 {
		return
	}
	l.connFails, l.connHold = 0, time.Time{}
	l.wakeWaitersLocked()
}

// throttle lowers the connection limit after 432 4.3.2 (docs/office365.md §4).
func (l *lane) throttle() {
	l.mu.Lock()
	if l.limit > 1 {
		l.limit--
	}
	l.throttled = l.e.clock.Now()
	limit := l.limit
	l.pool.Configure(submit.Endpoint{Addr: l.acct.SMTPAddr, CAFile: l.acct.CAFile}, l.acct.Mailbox, limit)
	l.mu.Unlock()
	l.log.Warn().Int("connections", limit).Msg("too many connections for this mailbox (432 4.3.2): using fewer")
}

// recoverThrottle raises the limit one step per ThrottleRecover without a 432.
func (l *lane) recoverThrottle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.throttled.IsZero() || l.e.clock.Now().Sub(l.throttled) < l.e.cfg.ThrottleRecover {
		return
	}
	l.limit++
	l.throttled = l.e.clock.Now()
	if l.limit >= l.acct.MaxConns {
		l.limit, l.throttled = l.acct.MaxConns, time.Time{}
	}
	l.pool.Configure(submit.Endpoint{Addr: l.acct.SMTPAddr, CAFile: l.acct.CAFile}, l.acct.Mailbox, l.limit)
	l.wakeWaitersLocked()
	l.signal()
}

// maxUnknownLogged bounds the unknown field names a lane remembers having
// logged (a producer could send a new name with every message).
const maxUnknownLogged = 100

// unknownFields counts the JSON fields of a message the relay does not
// know (relay_message_unknown_fields_total) and logs each name once per
// account: a producer on a newer schema loses no mail, and a misspelled
// field ("subjet") is visible.
func (l *lane) unknownFields(names []string) {
	l.e.metrics.unknown.WithLabelValues(l.alias).Add(float64(len(names)))
	var fresh []string
	l.mu.Lock()
	for _, n := range names {
		if !l.unknown[n] && len(l.unknown) < maxUnknownLogged {
			if l.unknown == nil {
				l.unknown = map[string]bool{}
			}
			l.unknown[n] = true
			fresh = append(fresh, n)
		}
	}
	l.mu.Unlock()
	if len(fresh) > 0 {
		l.log.Warn().Strs("fields", fresh).Msg("messages carry JSON fields the relay does not know; they are ignored (a misspelled field name?)")
	}
}

// firstAttempt is when this message was first tried: now for a first
// delivery (remembered for later attempts here), what was remembered, or
// zero if the first attempt happened elsewhere (another process, before a
// restart); the dead letter then records when the message was queued.
func (l *lane) firstAttempt(seq uint64, delivered uint64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.firstSeen[seq]; ok {
		return t
	}
	if delivered > 1 {
		return time.Time{}
	}
	now := time.Now()
	if len(l.firstSeen) >= maxFirstSeen {
		// Entries of messages finished by another process: forget the old.
		for s, t := range l.firstSeen {
			if now.Sub(t) > 24*time.Hour {
				delete(l.firstSeen, s)
			}
		}
	}
	if len(l.firstSeen) < maxFirstSeen {
		l.firstSeen[seq] = now
	}
	return now
}

func (l *lane) forget(seq uint64) {
	l.mu.Lock()
	delete(l.firstSeen, seq)
	delete(l.lastFail, seq)
	l.mu.Unlock()
}

// failed remembers the last failure of a message that stays queued, for
// the dead letter it becomes if it expires.
func (l *lane) failed(seq uint64, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastFail == nil {
		l.lastFail = map[uint64]string{}
	}
	if _, ok := l.lastFail[seq]; ok || len(l.lastFail) < maxFirstSeen {
		l.lastFail[seq] = why
	}
}

func (l *lane) lastFailure(seq uint64) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastFail[seq]
}

func (l *lane) status() LaneStatus {
	l.mu.Lock()
	st := LaneStatus{
		Account: l.alias, Bound: l.bound, Paused: l.p.on, ConnLimit: l.limit,
		InFlight: l.msgs,
	}
	if l.p.on {
		st.PauseClass, st.PauseReason, st.PauseRemedy, st.PauseTenant, st.PausedUntil = string(l.p.class), l.p.reason, l.p.remedy, l.p.tenant, l.p.until
	}
	l.mu.Unlock()
	st.Sessions = l.pool.Size()
	st.RcptLimit = int(l.rcptLimit.Load())
	return st
}
