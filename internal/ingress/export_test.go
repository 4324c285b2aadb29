package ingress

// PasswordHashes is how many argon2id password checks s has run.
func (s *Server) PasswordHashes() int64 { return s.verify.hashes.Load() }
