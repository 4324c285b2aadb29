package tokensvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"relay365/internal/flight"
	"relay365/internal/token"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	NC *nats.Conn
	// Margin: a cached token expiring within it is asked for again. Keep
	// it below the service's refresh margin (the daemon uses half), so the
	// service has normally refreshed already when a worker asks. Default
	// 150s.
	Margin time.Duration
	// Timeout bounds one request (a refresh may take up to the lease);
	// default 90s. A shorter caller deadline wins.
	Timeout time.Duration
	// Now is the clock for cache expiry (default time.Now).
	Now func() time.Time
}

// Client is the workers' view of the token service: it implements
// relay.Tokens. Tokens are cached in memory per account and asked for
// again only when they come within Margin of expiry or after ForceRefresh
// (an authentication failure). Concurrent callers for one account share
// one request. Errors are typed as the service sent them: a
// *token.IdentityError (needs_consent, config_error, transient),
// account.ErrNotFound or token.ErrNotFound; anything else (no token
// service running, timeout) is temporary.
type Client struct {
	nc      *nats.Conn
	margin  time.Duration
	timeout time.Duration
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]token.AccessToken
	calls flight.Group[callKey, token.AccessToken]

	// token.stored watchers: one subscription for every account.
	watchMu  sync.Mutex
	storedSb *nats.Subscription
	watchers map[string]map[chan struct{}]struct{}
}

type callKey struct {
	alias string
	force bool
}

// NewClient builds a client; NC is required.
func NewClient(cfg ClientConfig) *Client {
	if cfg.NC == nil {
		panic("tokensvc.NewClient: NC is required")
	}
	c := &Client{
		nc: cfg.NC, margin: cfg.Margin, timeout: cfg.Timeout, now: cfg.Now,
		cache: map[string]token.AccessToken{},
	}
	if c.margin <= 0 {
		c.margin = 150 * time.Second
	}
	if c.timeout <= 0 {
		c.timeout = 90 * time.Second
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Token returns a valid access token for the account.
func (c *Client) Token(ctx context.Context, alias string) (token.AccessToken, error) {
	c.mu.Lock()
	tok, ok := c.cache[alias]
	c.mu.Unlock()
	if ok && tok.Expiry.After(c.now().Add(c.margin)) {
		return tok, nil
	}
	return c.do(ctx, callKey{alias: alias}, SubjectGet, Request{Account: alias})
}

// Reload drops the cached token and asks the service for the one stored
// now (token.get: no refresh unless it is due). A worker whose account
// record disagrees with the binding of its cached token uses it: a new
// consent may have bound new values since the token was cached.
func (c *Client) Reload(ctx context.Context, alias string) (token.AccessToken, error) {
	c.mu.Lock()
	delete(c.cache, alias)
	c.mu.Unlock()
	return c.do(ctx, callKey{alias: alias}, SubjectGet, Request{Account: alias})
}

// ForceRefresh drops the cached token and asks the service for a new one
// (after SMTP 535 5.7.3). The service refreshes at most once for all
// callers refused with the same token.
func (c *Client) ForceRefresh(ctx context.Context, alias string) (token.AccessToken, error) {
	c.mu.Lock()
	since := c.cache[alias].Issued
	delete(c.cache, alias)
	c.mu.Unlock()
	return c.do(ctx, callKey{alias: alias, force: true}, SubjectRefresh, Request{Account: alias, Since: since})
}

// SMTPRefused reports that the SMTP server refused tok, which a forced
// refresh had just given: the token service records the account as
// needing consent (token.smtp_refused), and the cached token is dropped.
// It returns whether the record was marked.
func (c *Client) SMTPRefused(ctx context.Context, alias string, tok token.AccessToken) (bool, error) {
	c.mu.Lock()
	if cur, ok := c.cache[alias]; ok && !cur.Issued.After(tok.Issued) {
		delete(c.cache, alias)
	}
	c.mu.Unlock()
	return c.smtpRefused(ctx, Request{Account: alias, Since: tok.Issued})
}

// SMTPAccepted reports that the SMTP server took a token again after the
// refusal SMTPRefused reported for the token issued at since: the alarm
// ends (needs_consent no longer shown for it). It returns whether the
// record changed.
func (c *Client) SMTPAccepted(ctx context.Context, alias string, since time.Time) (bool, error) {
	return c.smtpRefused(ctx, Request{Account: alias, Since: since, Accepted: true})
}

func (c *Client) smtpRefused(ctx context.Context, r Request) (bool, error) {
	alias := r.Account
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	body, _ := json.Marshal(r)
	msg, err := c.request(ctx, SubjectSMTPRefused, body)
	if err != nil {
		return false, err
	}
	var rep SMTPRefusedReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return false, fmt.Errorf("token service: %s reply for account %s does not decode", SubjectSMTPRefused, alias)
	}
	return rep.Marked, nil
}

// Status asks one token service replica for every account's token state.
func (c *Client) Status(ctx context.Context) (StatusReply, error) {
	return c.status(ctx, StatusRequest{})
}

// StatusOf asks one token service replica for one account's token state.
func (c *Client) StatusOf(ctx context.Context, alias string) (AccountStatus, error) {
	st, err := c.status(ctx, StatusRequest{Account: alias})
	switch {
	case err != nil:
		return AccountStatus{}, err
	case len(st.Accounts) != 1 || st.Accounts[0].Account != alias:
		return AccountStatus{}, fmt.Errorf("token service: token.status for account %s answered %d accounts", alias, len(st.Accounts))
	}
	return st.Accounts[0], nil
}

func (c *Client) status(ctx context.Context, r StatusRequest) (StatusReply, error) {
	var st StatusReply
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	body, _ := json.Marshal(r)
	msg, err := c.request(ctx, SubjectStatus, body)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		return st, fmt.Errorf("token service: token.status reply does not decode: %w", err)
	}
	return st, nil
}

// Usable reports whether the account has a usable token now, by the token
// service's word (token.status): a paused worker asks once, after it
// started to watch for token.stored, in case the token came in between.
func (c *Client) Usable(ctx context.Context, alias string) (bool, error) {
	st, err := c.StatusOf(ctx, alias)
	if err != nil {
		return false, err
	}
	return st.State == string(token.StateHealthy) || st.State == string(token.StateTransient), nil
}

// WatchStored returns a channel that receives whenever the token service
// announces a new usable access token for the account (token.stored: a
// refresh, or a new consent), until ctx ends. Announcements that arrive
// while the last one is unread are merged. Workers learn of a new consent
// this way instead of reading relay_tokens, which they may not.
func (c *Client) WatchStored(ctx context.Context, alias string) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.storedSb == nil {
		sub, err := c.nc.Subscribe(SubjectStored, c.onStored)
		if err != nil {
			return nil, fmt.Errorf("token service: subscribe %s: %w", SubjectStored, err)
		}
		c.storedSb, c.watchers = sub, map[string]map[chan struct{}]struct{}{}
	}
	if c.watchers[alias] == nil {
		c.watchers[alias] = map[chan struct{}]struct{}{}
	}
	c.watchers[alias][ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		c.watchMu.Lock()
		defer c.watchMu.Unlock()
		delete(c.watchers[alias], ch)
		if len(c.watchers[alias]) == 0 {
			delete(c.watchers, alias)
		}
	})
	return ch, nil
}

// onStored hands a token.stored event to the account's watchers. Only
// what was published on the subject itself: a worker may not publish
// there, but a push consumer of its own (on relay_sent, which it writes)
// may deliver onto it, and such a message keeps the stream's subject
// (TestWorkerCannotForgeTokenStored).
func (c *Client) onStored(msg *nats.Msg) {
	var ev Event
	if msg.Subject != SubjectStored || json.Unmarshal(msg.Data, &ev) != nil {
		return
	}
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	for ch := range c.watchers[ev.Account] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// do runs one request per key at a time; callers arriving meanwhile share
// it (package flight: a caller giving up does not fail the others).
func (c *Client) do(ctx context.Context, key callKey, subject string, r Request) (token.AccessToken, error) {
	tok, err := c.calls.Do(ctx, key, func() (token.AccessToken, error) {
		rctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		tok, err := c.fetch(rctx, subject, r)
		c.remember(r.Account, tok, err)
		return tok, err
	})
	if err != nil && ctx.Err() != nil {
		return tok, fmt.Errorf("token service: waiting for the token of account %s: %w", r.Account, err)
	}
	return tok, err
}

// remember caches a newer token; an identity error drops the cached one.
func (c *Client) remember(alias string, tok token.AccessToken, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		if cur, ok := c.cache[alias]; !ok || !cur.Issued.After(tok.Issued) {
			c.cache[alias] = tok
		}
	case errors.As(err, new(*token.IdentityError)):
		delete(c.cache, alias)
	}
}

func (c *Client) fetch(ctx context.Context, subject string, r Request) (token.AccessToken, error) {
	body, _ := json.Marshal(r)
	msg, err := c.request(ctx, subject, body)
	if err != nil {
		return token.AccessToken{}, err
	}
	var rep TokenReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.AccessToken == "" {
		return token.AccessToken{}, fmt.Errorf("token service: %s reply for account %s does not decode", subject, r.Account)
	}
	return rep.accessToken(), nil
}

// request sends one request and turns an error reply into its typed error.
func (c *Client) request(ctx context.Context, subject string, body []byte) (*nats.Msg, error) {
	msg, err := c.nc.RequestWithContext(ctx, subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("token service: no replica answers %s (is a relay serve with --roles tokens running?): %w", subject, err)
	case err != nil:
		return nil, fmt.Errorf("token service: %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, decodeError(code, msg.Header.Get(micro.ErrorHeader), msg.Data)
	}
	return msg, nil
}
