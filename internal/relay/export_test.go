package relay

// PacerPeeks is how many times the engine's lanes have asked the pacer for
// room: a lane waiting for the pacer or a slot must not ask in a loop.
func (e *Engine) PacerPeeks() int64 { return e.pacer.peeks.Load() }
