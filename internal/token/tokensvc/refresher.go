package tokensvc

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/token"
)

// The proactive refresh schedule, written down:
//
//   - due = expiry − margin + jitter, jitter uniform in [0, margin/5),
//     drawn once per access token: inside the margin, so the Source does
//     refresh, and spread so replicas and accounts do not all fire at once;
//     margin is token.EffectiveMargin: half the token's life when that is
//     shorter than the configured margin;
//   - not before NextAttempt (the transient backoff recorded by whoever
//     failed last, honouring Retry-After);
//   - not before the lease's end while another process holds the refresh
//     lease (token.Source.LeaseEnd: LeaseUntil, and a whole LeaseTTL after
//     this replica first read that lease): if it dies, we take over then
//     (well inside the margin);
//   - a record of an earlier version without a binding is bound first
//     (token.Source.Bind: trust on first use, logged);
//   - a token that expires before then after transient failures (the
//     state still healthy) wakes the schedule at its expiry, to record
//     state transient (token.Source.MarkLapsed);
//   - needs_consent / config_error: nothing until the record changes;
//   - an attempt that leaves the record unchanged (store unreachable) is
//     retried after 1s, 2s, 4s … at most 1m, jittered ±20%, never a hot loop.
const (
	jitterFraction = 5 // jitter < margin/jitterFraction
	idleBase       = time.Second
	idleMax        = time.Minute
)

// refresher keeps every registered account's access token refreshed before
// it expires, whether or not mail flows, and keeps the token gauges
// current from the store's changes.
type refresher struct {
	src      *token.Source
	store    *token.Store
	accounts *account.Registry
	clock    clock.Clock
	margin   time.Duration
	metrics  *Metrics
	log      zerolog.Logger
	// stored publishes token.stored for a record written while this
	// replica watched.
	stored func(token.Record)

	wg     sync.WaitGroup
	issued map[string]time.Time // account → LastRefresh of the record last seen (run's goroutine only)
}

type accountLoop struct {
	poke   chan struct{}
	cancel context.CancelFunc
}

// run watches the registry and the store until ctx ends.
func (r *refresher) run(ctx context.Context) {
	loops := map[string]*accountLoop{}
	defer func() {
		for _, l := range loops {
			l.cancel()
		}
		r.wg.Wait()
	}()
	var accts <-chan account.Change
	var recs <-chan token.Update
	for ctx.Err() == nil {
		if accts == nil || recs == nil {
			var err error
			if accts == nil {
				accts, err = r.accounts.Watch(ctx)
			}
			if err == nil && recs == nil {
				recs, err = r.store.Watch(ctx)
			}
			if err != nil {
				r.log.Warn().Err(err).Msg("cannot watch accounts and tokens; retrying")
				select { // wall time: NATS trouble, not token time
				case <-ctx.Done():
				case <-time.After(idleBase):
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
		case c, ok := <-accts:
			if !ok {
				accts = nil
				continue
			}
			r.account(ctx, loops, c)
		case u, ok := <-recs:
			if !ok {
				recs = nil
				continue
			}
			r.record(u)
			if l := loops[u.Account]; l != nil {
				select {
				case l.poke <- struct{}{}:
				default: // already poked
				}
			}
		}
	}
}

// account starts or stops the loop of an account.
func (r *refresher) account(ctx context.Context, loops map[string]*accountLoop, c account.Change) {
	l := loops[c.Alias]
	switch {
	case c.Deleted:
		if l != nil {
			l.cancel()
			delete(loops, c.Alias)
		}
		r.metrics.forget(c.Alias)
		r.log.Info().Str("account", c.Alias).Msg("account removed; its proactive refresh stopped")
	case c.Err != nil:
		r.log.Error().Str("account", c.Alias).Err(c.Err).Msg("account record does not decode; not refreshing it")
	case l == nil:
		actx, cancel := context.WithCancel(ctx)
		l = &accountLoop{poke: make(chan struct{}, 1), cancel: cancel}
		loops[c.Alias] = l
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.runAccount(actx, c.Alias, l.poke)
		}()
		r.log.Debug().Str("account", c.Alias).Msg("proactive refresh started")
	}
}

// record keeps the gauges in step with the store, and announces a new
// usable access token (token.stored) when one is written while it watches:
// a record whose token was obtained at another time than the last one
// seen. Leases, failures and the values found at start announce nothing.
func (r *refresher) record(u token.Update) {
	if r.issued == nil {
		r.issued = map[string]time.Time{}
	}
	switch {
	case u.Deleted:
		delete(r.issued, u.Account)
		r.metrics.forget(u.Account)
	case u.Err != nil:
		r.metrics.markUnreadable(u.Account)
		r.log.Error().Str("account", u.Account).Err(u.Err).Msg("token record does not open")
	default:
		r.metrics.setRecord(u.Record)
		last, seen := r.issued[u.Account]
		r.issued[u.Account] = u.Record.LastRefresh
		if !u.Initial && !u.Record.State.Blocking() && (!seen || !last.Equal(u.Record.LastRefresh)) && r.stored != nil {
			r.stored(u.Record)
		}
	}
}

// runAccount is one account's schedule (see the constants above).
func (r *refresher) runAccount(ctx context.Context, alias string, poke <-chan struct{}) {
	var (
		jitterFor time.Time
		jitter    time.Duration
		triedRev  uint64
		idle      int
	)
	for {
		rec, rev, err := r.store.Get(ctx, alias)
		if ctx.Err() != nil {
			return
		}
		now := r.clock.Now()
		wait := time.Duration(-1) // only a change of the record wakes us
		switch {
		case errors.Is(err, token.ErrNotFound), errors.Is(err, account.ErrNotFound):
			// Not consented yet: the consent's write wakes us.
		case err != nil:
			idle++
			wait = idleDelay(idle)
			r.log.Warn().Str("account", alias).Err(err).Dur("retry_in_ms", wait).Msg("proactive refresh cannot read the token record")
		case !rec.Binding.Bound():
			// A record of an earlier version: bind it now, at the
			// upgrade, rather than at its next use (Source.Bind).
			_, err := r.src.Bind(ctx, alias)
			if err == nil || ctx.Err() != nil {
				continue
			}
			idle++
			wait = idleDelay(idle)
			r.log.Warn().Str("account", alias).Err(err).Dur("retry_in_ms", wait).Msg("cannot bind the token record of an earlier version")
		default:
			if !rec.Expiry.Equal(jitterFor) {
				jitterFor, jitter = rec.Expiry, mrand.N(token.EffectiveMargin(r.margin, rec)/jitterFraction+1)
			}
			due, ok := r.due(rec, jitter)
			switch {
			case !ok:
				// Blocked: only a consent (a new record) helps.
			case token.Lapsed(rec, now) && rev != triedRev:
				// The token expired during a backoff: say so now rather
				// than at the next attempt (Source.MarkLapsed).
				triedRev, idle = rev, 0
				if _, err := r.src.MarkLapsed(ctx, alias); err != nil && ctx.Err() == nil {
					r.log.Warn().Str("account", alias).Err(err).Msg("cannot record that the access token expired")
				}
				continue
			case due.After(now):
				idle, wait = 0, due.Sub(now)
				if !token.Lapsed(rec, now) && token.Lapsed(rec, due) {
					wait = rec.Expiry.Sub(now) // it lapses first: to mark it then
				}
			case rev != triedRev:
				triedRev = rev
				r.refresh(ctx, alias)
				continue
			default:
				// Tried at this revision and nothing changed (the store
				// refused the write): try again after the pause. Without
				// forgetting the revision tried, nothing but another
				// write would ever wake the schedule again, and a quiet
				// account's token would expire unrefreshed.
				idle++
				wait = idleDelay(idle)
				triedRev = 0
			}
		}
		if !r.sleep(ctx, now, wait, poke) {
			return
		}
	}
}

// due is when rec should be refreshed; false while it is blocked.
func (r *refresher) due(rec token.Record, jitter time.Duration) (time.Time, bool) {
	if rec.State.Blocking() {
		return time.Time{}, false
	}
	due := rec.Expiry.Add(-token.EffectiveMargin(r.margin, rec) + jitter)
	if rec.NextAttempt.After(due) {
		due = rec.NextAttempt
	}
	if rec.LeaseOwner != "" {
		if end := r.src.LeaseEnd(rec); end.After(due) {
			due = end // LeaseUntil, or later on our clock (token.Source.LeaseEnd)
		}
	}
	return due, true
}

// refresh asks the Source, which refreshes because the token is inside the
// margin (or answers from the record when someone else just did). Failures
// of the identity platform are already logged, counted and published by
// the Source's observer; any other (the store refused a write) is
// logged here, or nobody would hear of it.
func (r *refresher) refresh(ctx context.Context, alias string) {
	_, err := r.src.Token(ctx, alias)
	if err == nil || ctx.Err() != nil {
		return
	}
	ev := r.log.Warn()
	var ie *token.IdentityError
	if errors.As(err, &ie) || errors.Is(err, token.ErrRefreshInProgress) {
		ev = r.log.Debug() // logged by the Source, or another replica's to report
	}
	ev.Str("account", alias).Err(err).Msg("proactive refresh did not yield a token")
}

// sleep waits until now+d on the clock (d < 0: no timer), a poke or ctx;
// it reports false when ctx ended.
func (r *refresher) sleep(ctx context.Context, now time.Time, d time.Duration, poke <-chan struct{}) bool {
	var fire <-chan time.Time
	if d >= 0 {
		t := r.clock.NewTimer(d)
		defer t.Stop()
		// The timer counts d from the clock's time when it is armed: if
		// the clock moved past now+d since now was read (a test's fake
		// clock stepped between the two), it would wait a whole d more.
		if !r.clock.Now().Before(now.Add(d)) {
			return true
		}
		fire = t.C()
	}
	select {
	case <-ctx.Done():
		return false
	case <-poke:
	case <-fire:
	}
	return true
}

// idleDelay is the wait after the n-th attempt that changed nothing.
func idleDelay(n int) time.Duration {
	d := idleMax
	if n < 10 {
		d = min(idleBase<<max(n-1, 0), idleMax)
	}
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}
