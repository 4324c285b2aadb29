package token

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"relay365/internal/account"
	"relay365/internal/crashpoint"
	"relay365/internal/flight"
)

// AccessToken is a usable access token for one mailbox. Printing it with
// fmt (any verb) or logging it with zerolog never shows the token.
type AccessToken struct {
	Token   string
	Expiry  time.Time
	Mailbox string
	// Issued is when the token was obtained (the record's LastRefresh). A
	// caller whose token was refused passes it to ForceRefreshSince, so a
	// refresh that happened after it is reused instead of repeated.
	Issued time.Time
	// Binding is where the token may be used, from the sealed record; a
	// worker checks its account record against it before it dials.
	// Zero from a token service of an earlier version.
	Binding Binding
}

// String is a redacted description.
func (t AccessToken) String() string {
	return fmt.Sprintf("AccessToken{mailbox=%s expiry=%s smtp_addr=%s token=%s}", t.Mailbox, t.Expiry.UTC().Format(time.RFC3339), t.Binding.SMTPAddr, redacted(t.Token))
}

// GoString keeps %#v redacted.
func (t AccessToken) GoString() string { return t.String() }

// Format makes every fmt verb print String.
func (t AccessToken) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, t.String()) }

// MarshalZerologObject logs the token's metadata only.
func (t AccessToken) MarshalZerologObject(e *zerolog.Event) {
	e.Str("mailbox", t.Mailbox).Time("expiry", t.Expiry)
}

// SourceConfig configures a Source.
type SourceConfig struct {
	Store    *Store
	Accounts *account.Registry
	// Margin: tokens expiring within it are refreshed (default 5m).
	Margin time.Duration
	// HTTPClient for the token endpoint (default: 30s timeout, proxy from
	// HTTPS_PROXY/NO_PROXY). The proxy URL sealed in an account's record
	// overrides the proxy.
	HTTPClient *http.Client
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log zerolog.Logger
	// LeaseTTL bounds how long one refresher may hold an account's refresh
	// before others take over (default 60s).
	LeaseTTL time.Duration
	// LeaseWait bounds how long a caller that needs a token (Token, not
	// ForceRefreshSince, which waits for the lease's end) waits for
	// another process's refresh (its lease) before it gets
	// ErrRefreshInProgress, a temporary error (default a third of
	// LeaseTTL, at most 20s). A holder that died leaves its lease for up
	// to LeaseTTL; without the bound a worker's token.get would wait all
	// of it and leave its own refresh, once it may take over, too little
	// of the worker's request timeout.
	LeaseWait time.Duration
	// Instance names this process in leases (LeaseOwner is
	// "<instance>/<random>") and logs; default "relay".
	Instance string
	// OnRefresh, if set, is called after every call to the identity
	// platform that got an answer (or a network failure), with what it
	// changed. It runs on the refreshing goroutine: keep it short.
	OnRefresh func(Outcome)
}

// Outcome is one refresh attempt as reported to SourceConfig.OnRefresh.
// It holds no secrets.
type Outcome struct {
	Account string
	// Err is nil when the identity platform issued a token; otherwise the
	// classified failure (Class is the result).
	Err *IdentityError
	// From and To are the record's state before and after.
	From, To State
	// Expiry of the access token stored after the attempt.
	Expiry time.Time
	// FailCount and NextAttempt after the attempt (transient backoff).
	FailCount   int
	NextAttempt time.Time
	Forced      bool
	Rotated     bool // a new refresh token was issued and kept
	AppOnly     bool
	// SMTPRefused: no call to the identity platform, but the SMTP
	// server's refusal of a token it had just issued (MarkSMTPRefused).
	SMTPRefused bool
}

// Result is the bounded label of the outcome: "ok" or the failure class.
func (o Outcome) Result() string {
	if o.Err == nil {
		return "ok"
	}
	return string(o.Err.Class)
}

// DefaultMargin is how long before expiry an access token is refreshed
// (relay serve --refresh-margin): well inside the 60-90 minutes an access
// token lives, and long enough for a refresh that waits out a replica's
// lease.
const DefaultMargin = 5 * time.Minute

const (
	defaultLeaseTTL = 60 * time.Second
	maxLeaseWait    = 20 * time.Second
	defaultHTTPTime = 30 * time.Second
	storeTimeout    = 10 * time.Second
	storeRetryBase  = 50 * time.Millisecond // a refused result write, again after
	storeRetryMax   = time.Second
	maxRounds       = 8
	backoffBase     = 2 * time.Second
	backoffMax      = 5 * time.Minute
)

// Source hands out valid access tokens, refreshing them through the
// identity platform when they come within Margin of expiry. See the
// package documentation for the protocol. It is safe for concurrent use.
type Source struct {
	store     *Store
	accounts  *account.Registry
	margin    time.Duration
	leaseTTL  time.Duration
	leaseWait time.Duration
	hc        *http.Client
	now       func() time.Time
	log       zerolog.Logger
	instance  string
	observe   func(Outcome)

	// base bounds every refresh; Close cancels it (a stopping process
	// abandons its refreshes rather than finishing them unobserved).
	base   context.Context
	cancel context.CancelFunc

	flights flight.Group[flightKey, AccessToken]

	proxyMu sync.Mutex
	proxies map[string]*http.Client
}

type flightKey struct {
	alias string
	force bool
}

// NewSource builds a Source. Store and Accounts are required.
func NewSource(cfg SourceConfig) *Source {
	if cfg.Store == nil || cfg.Accounts == nil {
		panic("token.NewSource: Store and Accounts are required")
	}
	s := &Source{
		store:     cfg.Store,
		accounts:  cfg.Accounts,
		margin:    cfg.Margin,
		leaseTTL:  cfg.LeaseTTL,
		leaseWait: cfg.LeaseWait,
		hc:        cfg.HTTPClient,
		now:       cfg.Now,
		log:       cfg.Log.With().Str("component", "token").Logger(),
		instance:  cfg.Instance,
		observe:   cfg.OnRefresh,
		proxies:   map[string]*http.Client{},
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	if s.instance == "" {
		s.instance = "relay"
	}
	if s.observe == nil {
		s.observe = func(Outcome) {}
	}
	if s.margin <= 0 {
		s.margin = DefaultMargin
	}
	if s.leaseTTL <= 0 {
		s.leaseTTL = defaultLeaseTTL
	}
	if s.leaseWait <= 0 {
		s.leaseWait = min(s.leaseTTL/3, maxLeaseWait)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.store.setClock(s.now)
	if s.hc == nil {
		s.hc, _ = NewHTTPClient("") // no proxy URL: cannot fail
	}
	return s
}

// Token returns a valid access token for the account, refreshing it if it
// expires within Margin. For an account in needs_consent or config_error
// it returns the *IdentityError at once without calling the identity
// platform. After a transient failure it keeps handing out the old token
// while it is still valid.
func (s *Source) Token(ctx context.Context, alias string) (AccessToken, error) {
	acct, rec, err := s.load(ctx, alias)
	if err != nil {
		return AccessToken{}, err
	}
	if tok, done, err := s.decide(rec, acct, s.now(), false, time.Time{}); done {
		return tok, err
	}
	return s.join(ctx, flightKey{alias: alias}, time.Time{})
}

// load reads the account's configuration and its token record, binding a
// record of an earlier version first (Bind).
func (s *Source) load(ctx context.Context, alias string) (account.Account, Record, error) {
	acct, err := s.accounts.Get(ctx, alias)
	if err != nil {
		return account.Account{}, Record{}, err
	}
	rec, rev, err := s.store.Get(ctx, alias)
	if err == nil && !rec.Binding.Bound() {
		rec, err = s.bind(ctx, acct, rec, rev)
	}
	return acct, rec, err
}

// Bind gives the account's token record a binding if it has none (a
// record stored before bindings existed), and reports whether it wrote.
// The token service calls it for every record it finds unbound, so the
// records of a running installation are bound at the upgrade, without
// anyone signing in again.
func (s *Source) Bind(ctx context.Context, alias string) (bool, error) {
	acct, err := s.accounts.Get(ctx, alias)
	if err != nil {
		return false, err
	}
	rec, rev, err := s.store.Get(ctx, alias)
	if err != nil || rec.Binding.Bound() {
		return false, err
	}
	_, err = s.bind(ctx, acct, rec, rev)
	return err == nil, err
}

// bind is trust on first use for records stored before bindings existed:
// it binds rec (at revision rev) to the account record as it is now (its
// SMTP endpoint, CA file and client id) and seals the account's proxy URL
// with it, with a compare-and-set, and logs that it did. From then on a
// worker refuses an account record that differs. What was rewritten
// before this first use is trusted; docs/design.md §9.6.
func (s *Source) bind(ctx context.Context, acct account.Account, rec Record, rev uint64) (Record, error) {
	for range maxRounds {
		next := rec
		next.Binding = BindingOf(acct)
		if next.ProxyURL == "" {
			next.ProxyURL = acct.ProxyURL
		}
		_, err := s.store.Update(ctx, next, rev)
		if err == nil {
			s.log.Warn().Str("account", acct.Alias).Str("smtp_addr", next.Binding.SMTPAddr).Str("ca_file", next.Binding.CAFile).
				Str("client_id", next.Binding.ClientID).Str("proxy", account.RedactProxy(next.ProxyURL)).
				Msg("token record had no binding (stored by an earlier version): bound to the account record as it is now (trust on first use); run authtool login again if that record is not what you configured")
			return next, nil
		}
		if !errors.Is(err, ErrConflict) {
			return Record{}, fmt.Errorf("binding the token record of account %s: %w", acct.Alias, err)
		}
		if rec, rev, err = s.store.Get(ctx, acct.Alias); err != nil {
			return Record{}, err
		}
		if rec.Binding.Bound() {
			return rec, nil // another replica bound it
		}
	}
	return Record{}, fmt.Errorf("binding the token record of account %s did not settle: the record kept changing (transient, retry later)", acct.Alias)
}

// Close abandons refreshes in flight (their callers get an error; a lease
// taken stays until it expires, exactly as if the process had crashed) and
// makes later refreshes fail at once. Reads of valid tokens still work.
func (s *Source) Close() { s.cancel() }

// Margin is how long before expiry a token is refreshed.
func (s *Source) Margin() time.Duration { return s.margin }

// ForceRefresh refreshes now even though the stored token looks valid
// (e.g. after SMTP 535 5.7.3), unless another refresh finished after this
// call started, whose token it then returns. Blocked accounts return their
// *IdentityError without calling the identity platform, and so does an
// account backing off after a transient failure (until NextAttempt).
func (s *Source) ForceRefresh(ctx context.Context, alias string) (AccessToken, error) {
	return s.ForceRefreshSince(ctx, alias, time.Time{})
}

// ForceRefreshSince is ForceRefresh for a caller whose token, issued at
// since (AccessToken.Issued), was refused: a token refreshed after since is
// returned without another refresh, so many workers refused at once cause
// one refresh. A zero or future since means "now".
func (s *Source) ForceRefreshSince(ctx context.Context, alias string, since time.Time) (AccessToken, error) {
	if now := s.now(); since.IsZero() || since.After(now) {
		since = now
	}
	acct, rec, err := s.load(ctx, alias)
	if err != nil {
		return AccessToken{}, err
	}
	if rec.State.Blocking() {
		return AccessToken{}, blockedError(rec, acct)
	}
	return s.join(ctx, flightKey{alias: alias, force: true}, since)
}

// join runs at most one refresh per (account, force) in this process; late
// callers wait for the running one. The refresh itself is detached from
// the callers' cancellation (bounded by the lease and by Close), so a
// cancelled caller never leaves a rotated refresh token unwritten.
func (s *Source) join(ctx context.Context, key flightKey, since time.Time) (AccessToken, error) {
	return s.flights.Do(ctx, key, func() (AccessToken, error) {
		fctx, cancel := context.WithTimeout(s.base, s.leaseTTL+30*time.Second)
		defer cancel()
		return s.refresh(fctx, key.alias, key.force, since)
	})
}

// usable reports whether rec's access token is outside margin, as
// EffectiveMargin shortens it for short-lived tokens.
func usable(rec Record, now time.Time, margin time.Duration) bool {
	return rec.AccessToken != "" && rec.Expiry.After(now.Add(EffectiveMargin(margin, rec)))
}

// EffectiveMargin is how long before rec's expiry its access token is
// refreshed: margin, or half the token's life (LastRefresh to Expiry)
// when that is shorter. Entra's tokens live 60-90 minutes, far beyond
// the margin; an identity platform whose tokens live less than twice the
// margin (Keycloak's default is 5 minutes, the default margin too) would
// otherwise issue each token already inside the margin, and the token
// would be refreshed again at once, on every request and by the
// proactive refresher, without end.
func EffectiveMargin(margin time.Duration, rec Record) time.Duration {
	if rec.LastRefresh.IsZero() {
		return margin
	}
	if half := rec.Expiry.Sub(rec.LastRefresh) / 2; half > 0 && half < margin {
		return half
	}
	return margin
}

func stillValid(rec Record, now time.Time) bool {
	return rec.AccessToken != "" && rec.Expiry.After(now)
}

func tokenOf(rec Record, acct account.Account) AccessToken {
	return AccessToken{Token: rec.AccessToken, Expiry: rec.Expiry, Mailbox: acct.Mailbox, Issued: rec.LastRefresh, Binding: rec.Binding}
}

// decide answers from the stored record alone when it can; done=false
// means the identity platform has to be asked.
func (s *Source) decide(rec Record, acct account.Account, now time.Time, force bool, since time.Time) (AccessToken, bool, error) {
	switch {
	case rec.State.Blocking():
		return AccessToken{}, true, blockedError(rec, acct)
	case !force && usable(rec, now, s.margin):
		return tokenOf(rec, acct), true, nil
	case force && rec.LastRefresh.After(since) && stillValid(rec, now):
		return tokenOf(rec, acct), true, nil // refreshed by someone after the caller asked
	case now.Before(rec.NextAttempt):
		// Backing off after a transient failure, forced refreshes too:
		// never sooner than Retry-After, however many tokens are refused.
		if !force && stillValid(rec, now) {
			return tokenOf(rec, acct), true, nil
		}
		return AccessToken{}, true, transientError(rec, acct, now)
	}
	return AccessToken{}, false, nil
}

func blockedError(rec Record, acct account.Account) *IdentityError {
	e := &IdentityError{Err: rec.ErrorName, Codes: rec.ErrorCodes, Class: rec.State}
	e.Remedy = remedy(e, acct.Alias, acct.AppOnly)
	return e
}

func transientError(rec Record, acct account.Account, now time.Time) *IdentityError {
	e := &IdentityError{Err: rec.ErrorName, Codes: rec.ErrorCodes, Class: StateTransient, RetryAfter: max(rec.NextAttempt.Sub(now), 0)}
	e.Remedy = remedy(e, acct.Alias, acct.AppOnly)
	return e
}

// Lapsed reports whether rec still says healthy although its access
// token has expired after transient failures: a failure recorded while
// the token was valid leaves the state healthy (the token is still
// handed out), and nothing else writes the record before the next
// attempt, which a Retry-After can put an hour away. MarkLapsed corrects
// the state.
func Lapsed(rec Record, now time.Time) bool {
	return rec.State == StateHealthy && rec.FailCount > 0 && !stillValid(rec, now)
}

// MarkLapsed writes state transient into the record of an account whose
// access token expired while its refreshes were failing (Lapsed), without
// calling the identity platform, so the record, relay_token_state and
// /status say that no valid token is left until the next attempt. It
// leaves a record alone while another process holds its refresh lease
// (that one writes the outcome) and reports whether it wrote; a record
// changed meanwhile is not an error (the caller reads it again).
func (s *Source) MarkLapsed(ctx context.Context, alias string) (bool, error) {
	rec, rev, err := s.store.Get(ctx, alias)
	if err != nil {
		return false, err
	}
	now := s.now()
	if !Lapsed(rec, now) || s.leaseHeld(rec, now) {
		return false, nil
	}
	rec.State = StateTransient
	if _, err := s.store.Update(ctx, rec, rev); err != nil {
		if errors.Is(err, ErrConflict) {
			return false, nil
		}
		return false, err
	}
	s.log.Warn().Str("account", alias).Str("from", string(StateHealthy)).Str("to", string(StateTransient)).
		Int("fail_count", rec.FailCount).Time("next_attempt", rec.NextAttempt).
		Msg("token state changed: the access token expired while refreshes fail; retrying at the next attempt")
	return true, nil
}

// ErrSMTPRefused is the error name a record carries when the SMTP server
// refused (535) an access token the identity platform had just issued,
// after a forced refresh (MarkSMTPRefused).
const ErrSMTPRefused = "smtp_auth_refused"

// MarkSMTPRefused records that the SMTP server refused the access token
// issued at since (AccessToken.Issued) although it was fresh from a
// forced refresh: the identity platform issues tokens Office 365 will not
// take (the signed-in user is not the mailbox, the app lacks SMTP.Send or
// the mailbox permission, consent was withdrawn for it, or a permission
// just granted has not reached Exchange yet), and no refresh changes that
// (docs/office365.md §4). The record keeps its state and keeps handing
// out tokens, so the worker's probes (a forced refresh and a session)
// still resume the account by themselves once Office 365 takes them; but
// while its current token is the refused one, EffectiveState says
// needs_consent: relay_token_state, token.status and /status show it,
// and the account.consent_required event is published, as for a refresh
// the identity platform refused for want of consent. A record whose
// token is newer than since (someone refreshed meanwhile), already
// marked for it, or blocked is left alone. It reports whether it wrote.
func (s *Source) MarkSMTPRefused(ctx context.Context, alias string, since time.Time) (bool, error) {
	acct, err := s.accounts.Get(ctx, alias)
	if err != nil {
		return false, err
	}
	rec, rev, err := s.store.Get(ctx, alias)
	if err != nil {
		return false, err
	}
	if rec.State.Blocking() || !rec.LastRefresh.Equal(since) || rec.SMTPRefused.Equal(since) {
		return false, nil
	}
	from := rec.EffectiveState()
	f := rec
	f.SMTPRefused = since
	ie := f.Problem(acct, s.now())
	if _, err := s.store.Update(ctx, f, rev); err != nil {
		if errors.Is(err, ErrConflict) {
			return false, nil
		}
		return false, err
	}
	s.log.Error().Str("account", alias).Str("from", string(from)).Str("to", string(f.EffectiveState())).Str("remedy", ie.Remedy).
		Msg("token state changed: the SMTP server refused a freshly refreshed access token")
	s.observe(Outcome{Account: alias, Err: ie, From: from, To: f.EffectiveState(), Expiry: rec.Expiry,
		FailCount: f.FailCount, AppOnly: acct.AppOnly, SMTPRefused: true})
	return true, nil
}

// ClearSMTPRefused ends what MarkSMTPRefused recorded for the token
// issued at since: a worker's session authenticated again (a permission
// that reached Exchange, a passing refusal). It reports whether it
// wrote; a record not marked for since is left alone.
func (s *Source) ClearSMTPRefused(ctx context.Context, alias string, since time.Time) (bool, error) {
	rec, rev, err := s.store.Get(ctx, alias)
	if err != nil {
		return false, err
	}
	if rec.SMTPRefused.IsZero() || !rec.SMTPRefused.Equal(since) {
		return false, nil
	}
	from := rec.EffectiveState()
	f := rec
	f.SMTPRefused = time.Time{}
	if _, err := s.store.Update(ctx, f, rev); err != nil {
		if errors.Is(err, ErrConflict) {
			return false, nil
		}
		return false, err
	}
	if from != f.EffectiveState() {
		s.log.Info().Str("account", alias).Str("from", string(from)).Str("to", string(f.EffectiveState())).
			Msg("token state changed: the SMTP server takes the account's tokens again")
	}
	return true, nil
}

// EffectiveState is the record's state as operators see it: needs_consent
// while its current access token is one the SMTP server refused after a
// forced refresh (MarkSMTPRefused), else State.
func (r Record) EffectiveState() State {
	if !r.State.Blocking() && !r.SMTPRefused.IsZero() && r.SMTPRefused.Equal(r.LastRefresh) {
		return StateNeedsConsent
	}
	return r.State
}

// Problem is the failure recorded on r as the typed error callers get,
// with the remedy for acct (for status pages and the token.status
// endpoint); nil when the last refresh succeeded.
func (r Record) Problem(acct account.Account, now time.Time) *IdentityError {
	switch {
	case r.State.Blocking():
		return blockedError(r, acct)
	case r.EffectiveState() == StateNeedsConsent:
		e := &IdentityError{Err: ErrSMTPRefused, Class: StateNeedsConsent}
		e.Remedy = remedy(e, acct.Alias, acct.AppOnly)
		return e
	case r.FailCount > 0 || r.State == StateTransient:
		return transientError(r, acct, now)
	}
	return nil
}

// refresh is the body of one flight: re-read, take the lease with a
// compare-and-set, call the identity platform, write the result with a
// compare-and-set on the lease revision.
func (s *Source) refresh(ctx context.Context, alias string, force bool, since time.Time) (AccessToken, error) {
	acct, err := s.accounts.Get(ctx, alias)
	if err != nil {
		return AccessToken{}, err
	}
	var waitEnd time.Time // wall time; set at the first wait for another's lease
	for range maxRounds {
		rec, rev, err := s.store.Get(ctx, alias)
		if err != nil {
			return AccessToken{}, err
		}
		if !rec.Binding.Bound() {
			// Written meanwhile by a token service of an earlier version.
			if _, err := s.bind(ctx, acct, rec, rev); err != nil {
				return AccessToken{}, err
			}
			continue
		}
		now := s.now()
		if tok, done, err := s.decide(rec, acct, now, force, since); done {
			return tok, err
		}
		if s.leaseHeld(rec, now) {
			// Another process is refreshing: never spend the same refresh
			// token twice. Use the old token while valid, else wait for
			// the holder's write (KV watch) or the lease's end, but no
			// longer than leaseWait in all (wall time: the caller's
			// patience, not token time): a holder that died keeps its
			// lease until LeaseUntil, and the caller is better served by
			// a temporary error it can retry than by a reply that comes
			// after it gave up.
			if !force && stillValid(rec, now) {
				return tokenOf(rec, acct), nil
			}
			if waitEnd.IsZero() {
				// A forced refresh (token.refresh, after SMTP refused the
				// token) waits for the lease's end, at most a TTL after we
				// first read it (LeaseEnd): its caller holds a refused
				// token and nothing better to do meanwhile.
				wait := s.leaseWait
				if force {
					wait = s.leaseTTL
				}
				waitEnd = time.Now().Add(wait)
			}
			left := time.Until(waitEnd)
			if left <= 0 {
				return AccessToken{}, fmt.Errorf("account %s: the token service replica %s holds the refresh (lease until %s): %w",
					alias, LeaseInstance(rec), rec.LeaseUntil.UTC().Format(time.RFC3339), ErrRefreshInProgress)
			}
			s.log.Debug().Str("account", alias).Time("lease_until", rec.LeaseUntil).Msg("refresh in progress elsewhere, waiting")
			wctx, cancel := context.WithTimeout(ctx, min(s.LeaseEnd(rec).Sub(now), left))
			_, _, werr := s.store.WaitChange(wctx, alias, rev)
			cancel()
			if werr != nil && ctx.Err() != nil {
				return AccessToken{}, fmt.Errorf("waiting for the token refresh of account %s: %w", alias, ctx.Err())
			}
			continue
		}
		owner := s.newLeaseID()
		leased := rec
		leased.LeaseOwner, leased.LeaseUntil = owner, now.Add(s.leaseTTL)
		lrev, err := s.store.Update(ctx, leased, rev)
		if errors.Is(err, ErrConflict) {
			continue // someone else wrote first: re-read and decide again
		}
		if err != nil {
			return AccessToken{}, err
		}
		tok, err := s.exchangeAndStore(ctx, acct, rec, lrev, force)
		if errors.Is(err, errSuperseded) {
			continue // our failure was overtaken: decide on the record as it is now
		}
		return tok, err
	}
	return AccessToken{}, fmt.Errorf("token refresh of account %s did not settle: the record kept changing or another process holds the refresh (transient, retry later)", alias)
}

// LeaseEnd is when this process may take over the refresh lease rec
// holds: its LeaseUntil, but never before a whole lease TTL after this
// process first read that lease, on its own clock. LeaseUntil is the
// holder's clock plus the TTL, and read on ours it ends early by as much
// as our clock runs ahead; the holder keeps its lease for no longer than
// the TTL on its own clock (its call is bounded by half of it, the store
// retries by storeTimeout), and we cannot first read the lease before it
// was written, so a TTL measured from our first reading ends after the
// holder's, whatever the clocks say (docs/design.md §9.4, Clocks). The
// price: a process that first reads a lease after it was written (it
// started meanwhile) waits up to a TTL more.
func (s *Source) LeaseEnd(rec Record) time.Time {
	end := rec.LeaseUntil
	if at, ok := s.store.leaseSeenAt(rec.Account, rec.LeaseOwner); ok && at.Add(s.leaseTTL).After(end) {
		end = at.Add(s.leaseTTL)
	}
	return end
}

// leaseHeld reports whether another process's lease on rec still holds
// for us at now (LeaseEnd).
func (s *Source) leaseHeld(rec Record, now time.Time) bool {
	return rec.LeaseOwner != "" && now.Before(s.LeaseEnd(rec))
}

func (s *Source) newLeaseID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return s.instance + "/" + hex.EncodeToString(b[:])
}

// LeaseInstance is the Instance of the process holding a record's lease
// ("" when none is recorded).
func LeaseInstance(rec Record) string {
	inst, _, _ := strings.Cut(rec.LeaseOwner, "/")
	return inst
}

// exchangeAndStore calls the identity platform for rec (whose lease we hold
// at revision lrev) and writes the outcome.
func (s *Source) exchangeAndStore(ctx context.Context, acct account.Account, rec Record, lrev uint64, force bool) (AccessToken, error) {
	log := s.log.With().Str("account", acct.Alias).Logger()
	start := s.now()
	// Half the lease: with the store's retries the holder is done well
	// within the TTL that others wait from their first reading (LeaseEnd).
	ectx, cancel := context.WithTimeout(ctx, s.leaseTTL/2)
	tok, err := s.exchange(ectx, acct, rec)
	cancel()
	if err != nil && ctx.Err() != nil {
		// Closing: leave the lease to expire, as a crash would, and report
		// nothing (no answer was learnt).
		log.Warn().Msg("token refresh abandoned: the token service is stopping; another one takes over when the lease ends")
		return AccessToken{}, fmt.Errorf("token refresh of account %s abandoned: %w", acct.Alias, ctx.Err())
	}
	if err != nil {
		return s.recordFailure(ctx, acct, rec, lrev, Classify(err), force)
	}
	crashpoint.Hit(crashpoint.TokenAnswered) // the crash window of design.md §9.4

	next := rec
	next.AccessToken = tok.AccessToken
	if tok.RefreshToken != "" {
		next.RefreshToken = tok.RefreshToken // rotated; keep only the newest
	}
	next.Expiry = start.Add(Lifetime(tok))
	next.LastRefresh = s.now()
	next.State, next.LastError, next.FailCount = StateHealthy, "", 0
	next.ErrorName, next.ErrorCodes, next.NextAttempt = "", nil, time.Time{}
	next.LeaseOwner, next.LeaseUntil = "", time.Time{}
	rotated := tok.RefreshToken != "" && tok.RefreshToken != rec.RefreshToken
	// The rotated refresh token must reach the store even if the service
	// is being stopped right now (Close): only a crash may lose it.
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	at := s.storeResult(wctx, log, acct, rec, next, lrev, rotated, force)
	wcancel()
	s.observe(Outcome{Account: acct.Alias, From: rec.State, To: StateHealthy, Expiry: next.Expiry,
		Forced: force, Rotated: rotated, AppOnly: acct.AppOnly})
	return at, nil
}

// storeResult writes a successful refresh (next) over rec, whose lease we
// hold at lrev, and returns the token callers get: ours, or a newer one
// stored concurrently. A write the store refuses is tried again until ctx
// ends (storeTimeout): the rotated refresh token exists nowhere else, and
// a platform that revokes the previous one when it issues the next would
// refuse the refresh after this one. A write that never succeeds is
// logged, not returned: the new access token is usable now.
func (s *Source) storeResult(ctx context.Context, log zerolog.Logger, acct account.Account, rec, next Record, lrev uint64, rotated, force bool) AccessToken {
	at := tokenOf(next, acct)
	rev := lrev
	pause := storeRetryBase
	for conflicts := 0; conflicts < 3; {
		_, err := s.store.Update(ctx, next, rev)
		if err == nil {
			log.Info().Time("expiry", next.Expiry).Bool("rotated", rotated).Bool("forced", force).
				Str("key_id", s.store.keys.CurrentID()).Msg("token refreshed")
			return at
		}
		if !errors.Is(err, ErrConflict) {
			if pause == storeRetryBase {
				log.Warn().Err(err).Bool("rotated", rotated).Msg("token refreshed but the store refused the result; trying again")
			}
			select { // wall time: NATS trouble, not token time
			case <-ctx.Done():
				// The old refresh token stays valid in Entra for a while, so
				// the next refresh recovers; the new access token is usable now.
				log.Error().Err(err).Bool("rotated", rotated).Msg("token refreshed but the result could not be stored; the next refresh uses the previous refresh token")
				return at
			case <-time.After(pause):
			}
			pause = min(2*pause, storeRetryMax)
			continue
		}
		conflicts++
		cur, crev, gerr := s.store.Get(ctx, acct.Alias)
		if gerr != nil {
			log.Error().Err(gerr).Msg("token refreshed, store conflict, and re-read failed")
			return at
		}
		now := s.now()
		switch {
		case usable(cur, now, s.margin) && !cur.State.Blocking():
			log.Info().Msg("token refreshed concurrently elsewhere; using the stored one")
			return tokenOf(cur, acct)
		case cur.RefreshToken == rec.RefreshToken:
			// Only lease/state fields changed (e.g. our lease expired and
			// another process recorded a failure, or bound the record):
			// our result is newer, with the binding as stored.
			next.Binding, next.ProxyURL = cur.Binding, cur.ProxyURL
			at.Binding = cur.Binding
			rev = crev
			continue
		default:
			// A newer refresh token was stored (consent, another refresher)
			// without a usable access token: do not overwrite it.
			log.Warn().Msg("token refreshed but a newer refresh token was stored meanwhile; keeping the stored one")
			return at
		}
	}
	log.Error().Msg("token refreshed but the record kept changing; result not stored")
	return at
}

// recordFailure stores the classified failure on the record (CAS on the
// lease revision, which also releases the lease) and decides what the
// caller gets.
//
// A failure whose write loses the compare-and-set is first checked
// against the record as it is now (superseded): when our lease ran out
// (a slow call, a paused process) another replica may have taken over
// and refreshed with the same refresh token, and a platform that rotates
// strictly then refuses ours with invalid_grant. That says nothing about
// the account: a newer token stored by someone else is used and nothing
// is raised (no failure logged as such, counted, published or written).
func (s *Source) recordFailure(ctx context.Context, acct account.Account, rec Record, lrev uint64, ie *IdentityError, force bool) (AccessToken, error) {
	now := s.now()
	f := rec
	f.LeaseOwner, f.LeaseUntil = "", time.Time{}
	f.FailCount++
	f.ErrorName, f.ErrorCodes = ie.Err, ie.Codes
	if ie.Class.Blocking() {
		f.State, f.NextAttempt = ie.Class, time.Time{}
	} else {
		ie.Class = StateTransient
		ie.RetryAfter = backoff(f.FailCount, ie.RetryAfter)
		f.NextAttempt = now.Add(ie.RetryAfter)
		// Healthy until the access token actually expires.
		if stillValid(rec, now) {
			f.State = StateHealthy
		} else {
			f.State = StateTransient
		}
	}
	ie.Remedy = remedy(ie, acct.Alias, acct.AppOnly)
	f.LastError = ie.Error()

	_, werr := s.store.Update(ctx, f, lrev)
	for conflicts := 0; errors.Is(werr, ErrConflict) && conflicts < 3; conflicts++ {
		cur, crev, gerr := s.store.Get(ctx, acct.Alias)
		if gerr != nil {
			werr = gerr
			break
		}
		if tok, ok := superseded(rec, cur, s.now()); ok {
			s.log.Info().Str("account", acct.Alias).Str("class", string(ie.Class)).Str("oauth_error", ie.Err).Ints("error_codes", ie.Codes).
				Int("http_status", ie.Status).Str("lease_owner_instance", LeaseInstance(cur)).
				Msg("token refresh failed after our lease ran out, but a newer token was stored meanwhile by another refresher; using it, nothing to report")
			return tokenOf(tok, acct), nil
		}
		if cur.RefreshToken != rec.RefreshToken || cur.State.Blocking() || s.leaseHeld(cur, now) {
			// A newer refresh token without a usable access token (a
			// consent), a state recorded by someone else, or another
			// refresher at work with the same token: ours is not the
			// word on this account. Let the caller decide again on the
			// record as it is (errSuperseded), raising nothing.
			s.log.Info().Str("account", acct.Alias).Str("class", string(ie.Class)).Str("oauth_error", ie.Err).Ints("error_codes", ie.Codes).
				Str("lease_owner_instance", LeaseInstance(cur)).
				Msg("token refresh failed after our lease ran out, and the record has changed since; not recording the failure")
			return AccessToken{}, errSuperseded
		}
		// Only other fields changed (the record was bound, or marked
		// lapsed): our failure is the newest word, at this revision.
		f.Binding, f.ProxyURL = cur.Binding, cur.ProxyURL
		_, werr = s.store.Update(ctx, f, crev)
	}

	ev := s.log.Warn()
	if ie.Class.Blocking() {
		ev = s.log.Error()
	}
	ev.Str("account", acct.Alias).Str("class", string(ie.Class)).Str("oauth_error", ie.Err).Ints("error_codes", ie.Codes).
		Int("http_status", ie.Status).Int("fail_count", f.FailCount).Str("state", string(f.State)).
		Str("prev_state", string(rec.State)).Dur("retry_in_ms", ie.RetryAfter).Str("trace_id", ie.TraceID).
		Str("correlation_id", ie.CorrelationID).Str("remedy", ie.Remedy).
		Str("error", f.LastError).Msg("token refresh failed")
	if werr != nil {
		s.log.Warn().Str("account", acct.Alias).Err(werr).Msg("could not record the refresh failure")
	}
	s.observe(Outcome{Account: acct.Alias, Err: ie, From: rec.State, To: f.State, Expiry: rec.Expiry,
		FailCount: f.FailCount, NextAttempt: f.NextAttempt, Forced: force, AppOnly: acct.AppOnly})
	if !ie.Class.Blocking() && !force && stillValid(rec, now) {
		return tokenOf(rec, acct), nil
	}
	return AccessToken{}, ie
}

// errSuperseded is recordFailure's answer when the record changed under a
// refresh that failed after its lease ran out (another refresher, a
// consent): the refresh loop reads the record again and decides on it.
var errSuperseded = errors.New("token refresh superseded by a newer record")

// superseded reports whether cur, read after a refresh of rec failed,
// holds a newer usable access token than the one that refresh started
// from (stored by another refresher or a consent), and returns it.
func superseded(rec, cur Record, now time.Time) (Record, bool) {
	newer := cur.LastRefresh.After(rec.LastRefresh) || cur.RefreshToken != rec.RefreshToken
	return cur, newer && !cur.State.Blocking() && stillValid(cur, now)
}

// backoff is the wait after the n-th consecutive transient failure:
// exponential from 2s to 5m with jitter, never below Retry-After.
// Retry-After is jittered too, upwards by up to a fifth: a throttled
// platform answers every account it throttled at once with the same
// Retry-After, and without the jitter they would all come back at the
// same instant, as the burst that was throttled.
func backoff(n int, retryAfter time.Duration) time.Duration {
	d := backoffMax
	if n < 20 {
		d = min(backoffBase<<max(n-1, 0), backoffMax)
	}
	d = d/2 + mrand.N(d/2+1)
	if retryAfter > 0 {
		retryAfter += mrand.N(retryAfter/5 + 1)
	}
	return max(d, retryAfter)
}

// Bounds on an announced access token lifetime (Lifetime). Entra's access
// tokens live 60-90 minutes, and a token lifetime policy can set 10
// minutes to 1 day; a lifetime outside these bounds comes from a broken
// identity platform or something in between, and believing it would break
// the proactive refresh: decades meant never refreshing again (a quiet
// account's refresh token dies of inactivity, and the expiry gauge keeps
// RelayTokenExpiringWithoutRefresh quiet), a second meant a refresh twice
// a second, forever (the refresh comes at half the life, EffectiveMargin).
// A token the platform really ends sooner than believed is refused by
// SMTP (535 5.7.3), which forces a refresh.
const (
	MinLifetime = time.Minute
	MaxLifetime = 24 * time.Hour
)

// Lifetime is the token's lifetime as announced by expires_in, to be
// measured from before the request (conservative, and independent of clock
// skew), bounded to [MinLifetime, MaxLifetime]. Without expires_in it
// falls back to Expiry, then to one hour.
func Lifetime(tok *oauth2.Token) time.Duration {
	return min(max(announcedLifetime(tok), MinLifetime), MaxLifetime)
}

func announcedLifetime(tok *oauth2.Token) time.Duration {
	if tok.ExpiresIn > 0 {
		return seconds(tok.ExpiresIn)
	}
	switch v := tok.Extra("expires_in").(type) {
	case float64:
		if v > 0 {
			return seconds(int64(min(v, float64(MaxLifetime/time.Second))))
		}
	case string:
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			return seconds(n)
		}
	}
	if !tok.Expiry.IsZero() {
		if d := time.Until(tok.Expiry); d > 0 {
			return d
		}
	}
	return time.Hour
}

// seconds converts n > 0 seconds without overflowing: anything beyond
// MaxLifetime is MaxLifetime.
func seconds(n int64) time.Duration {
	return time.Duration(min(n, int64(MaxLifetime/time.Second))) * time.Second
}

// exchange performs one token request through the account's HTTP client.
func (s *Source) exchange(ctx context.Context, acct account.Account, rec Record) (*oauth2.Token, error) {
	return Exchange(ctx, s.clientFor(acct.Alias, rec.ProxyURL), acct, rec)
}

// Exchange performs one token request for acct with what rec holds: client
// credentials (RFC 6749 §4.4) for app-only accounts, otherwise the refresh
// token grant (§6) with the scope Microsoft wants. What rec holds wins over
// the account: the token endpoint, the scopes and the client id of the
// binding, so a rewritten account record does not change where the refresh
// token or client secret goes. Local impossibilities (no refresh token, no
// client secret) come back as IdentityErrors; other errors are x/oauth2's,
// for Classify. authtool uses it to prove an app's secret and an imported
// refresh token before anything is stored.
func Exchange(ctx context.Context, hc *http.Client, acct account.Account, rec Record) (*oauth2.Token, error) {
	hc = NoRedirects(hc)
	tokenURL := rec.TokenURL
	if tokenURL == "" {
		_, tokenURL, _ = acct.Endpoints()
	}
	clientID := rec.Binding.ClientID
	if clientID == "" {
		clientID = acct.ClientID
	}
	scopes := rec.Scopes
	if len(scopes) == 0 {
		scopes = acct.Scopes
	}
	if acct.AppOnly {
		if rec.ClientSecret == "" {
			return nil, &IdentityError{Err: "no_client_secret", Class: StateConfigError}
		}
		cc := clientcredentials.Config{
			ClientID: clientID, ClientSecret: rec.ClientSecret, TokenURL: tokenURL,
			Scopes: scopes, AuthStyle: oauth2.AuthStyleInParams,
		}
		return cc.Token(context.WithValue(ctx, oauth2.HTTPClient, hc))
	}
	if rec.RefreshToken == "" {
		return nil, &IdentityError{Err: "no_refresh_token", Class: StateNeedsConsent}
	}
	cfg := oauth2.Config{
		ClientID: clientID, ClientSecret: rec.ClientSecret, Scopes: scopes,
		Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInParams},
	}
	// x/oauth2 does not send scope on refresh; the Microsoft identity
	// platform wants it, so the client adds it to the form.
	hc = withRefreshScope(hc, scopes)
	ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
	return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rec.RefreshToken, Expiry: time.Unix(1, 0)}).Token()
}

// clientFor returns the HTTP client for an account whose sealed record
// names proxyURL: the configured one, or a copy whose transport uses that
// proxy (credentials included). The account record's proxy_url is only
// its credential-free form for display; a record of an earlier version
// took the account's when it was bound (Source.load).
func (s *Source) clientFor(alias, proxyURL string) *http.Client {
	if proxyURL == "" {
		return s.hc
	}
	s.proxyMu.Lock()
	defer s.proxyMu.Unlock()
	if c, ok := s.proxies[proxyURL]; ok {
		return c
	}
	c, err := WithProxy(s.hc, proxyURL)
	if err != nil {
		s.log.Warn().Str("account", alias).Err(err).Msg("cannot apply the account's proxy URL; using the default proxy settings")
		return s.hc
	}
	s.proxies[proxyURL] = c
	return c
}

// NoRedirects returns a copy of hc (http.DefaultClient when nil) that
// follows no redirect. A token request's body holds the refresh token,
// the client secret or an authorization code with its PKCE verifier, and
// net/http sends the body again after a 307 or 308 (RFC 9110 §15.4.8),
// to wherever Location names, http:// included: a token endpoint that
// answered so (a compromised or misconfigured one, or a proxy in between)
// would have the secret sent to a host no account names. No identity
// platform the relay works with redirects its token endpoint; the
// redirect comes back as the answer, which x/oauth2 reports as an error
// (Classify: transient), naming the status, never the body.
func NoRedirects(hc *http.Client) *http.Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// NewHTTPClient returns an HTTP client for identity platform calls: a 30s
// timeout, and proxyURL as proxy, or HTTPS_PROXY/NO_PROXY when it is empty.
func NewHTTPClient(proxyURL string) (*http.Client, error) {
	var rt http.RoundTripper = http.DefaultTransport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		tr := dt.Clone()
		tr.Proxy = http.ProxyFromEnvironment
		rt = tr
	}
	return WithProxy(&http.Client{Timeout: defaultHTTPTime, Transport: rt}, proxyURL)
}

// WithProxy returns a copy of hc whose transport goes through proxyURL
// (http, https or socks5); hc itself when proxyURL is empty. Errors never
// quote the URL, which may hold proxy credentials.
func WithProxy(hc *http.Client, proxyURL string) (*http.Client, error) {
	if proxyURL == "" {
		return hc, nil
	}
	u, err := url.Parse(proxyURL)
	if err != nil || u.Host == "" {
		return nil, errors.New("proxy URL does not parse: use http://host:port, https://host:port or socks5://host:port")
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	tr, ok := base.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("custom HTTP transport: cannot route through proxy %s", u.Redacted())
	}
	tr = tr.Clone()
	tr.Proxy = http.ProxyURL(u)
	c := *hc
	c.Transport = tr
	return &c, nil
}

func withRefreshScope(hc *http.Client, scopes []string) *http.Client {
	if len(scopes) == 0 {
		return hc
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c := *hc
	c.Transport = &scopeTransport{base: base, scope: strings.Join(scopes, " ")}
	return &c
}

// scopeTransport adds scope= to refresh_token grant requests that lack it.
type scopeTransport struct {
	base  http.RoundTripper
	scope string
}

func (t *scopeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || req.Body == nil || req.GetBody == nil ||
		!strings.HasPrefix(req.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		return t.base.RoundTrip(req)
	}
	body, err := req.GetBody()
	if err != nil {
		return t.base.RoundTrip(req)
	}
	raw, err := io.ReadAll(io.LimitReader(body, 1<<20))
	body.Close()
	if err != nil {
		return t.base.RoundTrip(req)
	}
	form, err := url.ParseQuery(string(raw))
	if err != nil || form.Get("grant_type") != "refresh_token" || form.Has("scope") {
		return t.base.RoundTrip(req)
	}
	form.Set("scope", t.scope)
	enc := []byte(form.Encode())
	r2 := req.Clone(req.Context())
	if req.Body != nil {
		_ = req.Body.Close() // we own it now; the clone carries the new body
	}
	r2.Body = io.NopCloser(bytes.NewReader(enc))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(enc)), nil }
	r2.ContentLength = int64(len(enc))
	return t.base.RoundTrip(r2)
}
