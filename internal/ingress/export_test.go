package ingress

import "time"

// PasswordHashes is how many argon2id password checks s has run.
func (s *Server) PasswordHashes() int64 { return s.verify.hashes.Load() }

// ProducerHash is the password hash the front door's copy of the producer
// registry holds for name ("" when it holds none): tests wait on it to know
// that a change in relay_producers has reached the front door.
func (s *Server) ProducerHash(name string) string {
	p, _ := s.prods.get(name)
	return p.Hash
}

// ForgetProducer drops name from the front door's copy of the registry, as
// if its watch had not yet seen the producer being added.
func (s *Server) ForgetProducer(name string) { s.prods.set(name, Producer{}, false) }

// HoldRefusals makes a refusal wait up to d for its client (refuseWithin)
// until the test ends, so a test can keep connlimit.MaxRefusing of them
// running.
func HoldRefusals(t interface{ Cleanup(func()) }, d time.Duration) {
	refuseWithinTest.Store(int64(d))
	t.Cleanup(func() { refuseWithinTest.Store(0) })
}

// LockoutKeyBytes is the memory the failed-login counts' keys take.
func (s *Server) LockoutKeyBytes() int {
	s.lockout.mu.Lock()
	defer s.lockout.mu.Unlock()
	n := 0
	for k := range s.lockout.keys {
		n += len(k)
	}
	return n
}
