package submit

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrPoolClosed: the pool was closed (its account's lane stopped).
var ErrPoolClosed = errors.New("session pool closed")

// ErrEndpointChanged: GetFor was asked for an endpoint the pool is no
// longer configured for (the account changed meanwhile); nothing was
// dialled.
var ErrEndpointChanged = errors.New("session pool configured for another endpoint")

// Pool keeps one account's SMTP sessions. Its user bounds how many are in
// use (at most its concurrency limit, Office 365's 3 by default); the pool
// keeps the idle ones, most recently used first, and:
//   - reuses an idle session as it is: no RSET round trip first (a
//     failed transaction's RSET opens the next pipelined group); a
//     session found dead by its next transaction before the server took
//     any of it is replaced and the transaction run again (the delivery engine does this),
//   - opens a new one (STARTTLS + AUTH) when none is idle,
//   - never reuses a session authenticated with another token than the
//     current one (XOAUTH2 cannot re-authenticate a session, RFC 4954 §4),
//     nor one for an old endpoint or mailbox: those are closed and
//     replaced,
//   - closes a session after an error that leaves it in doubt,
//   - closes sessions idle for longer than idle, and those above max.
type Pool struct {
	tr     *Transport
	idle   time.Duration
	onDial func(*Session)

	mu     sync.Mutex
	ep     Endpoint
	user   string
	max    int
	free   []*Session // idle, least recently used first
	open   int        // idle + in use
	closed bool
	timer  *time.Timer
}

func NewPool(tr *Transport, idle time.Duration, onDial func(*Session)) *Pool {
	return &Pool{tr: tr, idle: idle, onDial: onDial}
}

// Configure sets where and as whom sessions are opened and how many may be
// kept. Idle sessions that no longer fit are closed.
func (p *Pool) Configure(ep Endpoint, user string, max int) {
	p.mu.Lock()
	p.ep, p.user, p.max = ep, user, max
	var stale []*Session
	p.free = keep(p.free, func(s *Session) bool {
		if s.ep != ep || s.user != user {
			stale = append(stale, s)
			return false
		}
		return true
	})
	p.open -= len(stale)
	p.mu.Unlock()
	closeAll(stale)
}

// Get returns a ready session for token.
func (p *Pool) Get(ctx context.Context, token string) (*Session, error) {
	return p.get(ctx, token, nil)
}

// GetFor is Get for a token that may be presented to endpoint ep only: if
// the pool is configured for another endpoint (a concurrent Configure), it
// returns ErrEndpointChanged without dialling or handing out a session.
func (p *Pool) GetFor(ctx context.Context, token string, ep Endpoint) (*Session, error) {
	return p.get(ctx, token, &ep)
}

func (p *Pool) get(ctx context.Context, token string, want *Endpoint) (*Session, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		if want != nil && *want != p.ep {
			p.mu.Unlock()
			return nil, ErrEndpointChanged
		}
		if n := len(p.free); n > 0 {
			s := p.free[n-1]
			p.free = p.free[:n-1]
			fits := s.token == token && s.ep == p.ep && s.user == p.user && time.Since(s.lastUsed) < p.idle
			p.mu.Unlock()
			if fits {
				s.reused = true
				return s, nil
			}
			p.discard(s)
			continue
		}
		p.open++
		ep, user := p.ep, p.user
		p.mu.Unlock()
		s, err := p.tr.Dial(ctx, ep, user, token)
		if err != nil {
			p.mu.Lock()
			p.open--
			p.mu.Unlock()
			return nil, err
		}
		if p.onDial != nil {
			p.onDial(s)
		}
		return s, nil
	}
}

// Put returns a session after use.
func (p *Pool) Put(s *Session) {
	p.mu.Lock()
	if p.closed || !s.Reusable() || p.open > p.max {
		p.mu.Unlock()
		p.discard(s)
		return
	}
	p.free = append(p.free, s)
	if p.timer == nil {
		p.timer = time.AfterFunc(p.idle, p.reap)
	}
	p.mu.Unlock()
}

// discard closes a session that was taken out of the pool.
func (p *Pool) discard(s *Session) {
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
	s.Close()
}

// reap closes sessions idle for longer than p.idle and re-arms itself
// while idle sessions remain.
func (p *Pool) reap() {
	p.mu.Lock()
	now := time.Now()
	var old []*Session
	p.free = keep(p.free, func(s *Session) bool {
		if now.Sub(s.lastUsed) >= p.idle {
			old = append(old, s)
			return false
		}
		return true
	})
	p.open -= len(old)
	p.timer = nil
	if len(p.free) > 0 && !p.closed {
		p.timer = time.AfterFunc(p.idle-now.Sub(p.free[0].lastUsed), p.reap)
	}
	p.mu.Unlock()
	closeAll(old)
}

// Close quits every idle session; sessions in use are closed when put back.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	free := p.free
	p.free = nil
	p.open -= len(free)
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	closeAll(free)
}

// Size is the number of open sessions (idle and in use).
func (p *Pool) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func keep(ss []*Session, ok func(*Session) bool) []*Session {
	out := ss[:0]
	for _, s := range ss {
		if ok(s) {
			out = append(out, s)
		}
	}
	clear(ss[len(out):])
	return out
}

func closeAll(ss []*Session) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(s.Close)
	}
	wg.Wait()
}
