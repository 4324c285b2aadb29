package relay

import "relay365/internal/account"

// PacerPeeks is how many times the engine's lanes have asked the pacer for
// room: a lane waiting for the pacer or a slot must not ask in a loop.
func (e *Engine) PacerPeeks() int64 { return e.pacer.Peeks() }

// LaneAccount is the account record a lane works with.
func (e *Engine) LaneAccount(alias string) account.Account {
	e.mu.Lock()
	l := e.lanes[alias]
	e.mu.Unlock()
	return l.account()
}
