package ingress

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relay365/internal/clock"
)

// The password-guessing backoff, written down. Failures are counted per
// client address and per producer name; each key's count is forgotten
// after lockoutForget without a failure. From the lockoutAfter-th failure
// on, the key is locked for lockoutBase·2^(failures−lockoutAfter), at most
// lockoutMax. While either key of an attempt is locked, AUTH is answered
// 454 4.7.0 without looking at the password (so a guesser learns nothing
// and costs no hash), and a success clears both keys.
const (
	lockoutAfter  = 3
	lockoutBase   = time.Second
	lockoutMax    = 5 * time.Minute
	lockoutForget = 15 * time.Minute
	// maxTracked bounds the memory the counts take: beyond it, keys whose
	// last failure is oldest are forgotten first.
	maxTracked = 10000
)

type failures struct {
	n     int
	last  time.Time
	until time.Time // locked until
}

// lockout counts failed logins per key ("ip:…", "name:…").
type lockout struct {
	clock clock.Clock
	mu    sync.Mutex
	keys  map[string]*failures
}

func newLockout(clk clock.Clock) *lockout {
	return &lockout{clock: clk, keys: map[string]*failures{}}
}

// locked returns how long any of keys stays locked (0: not locked).
func (l *lockout) locked(keys ...string) time.Duration {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, k := range keys {
		if f := l.keys[k]; f != nil && f.until.After(now) {
			wait = max(wait, f.until.Sub(now))
		}
	}
	return wait
}

// fail records a failure for each key.
func (l *lockout) fail(keys ...string) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		f := l.keys[k]
		if f == nil || now.Sub(f.last) > lockoutForget {
			if len(l.keys) >= maxTracked {
				l.evictLocked()
			}
			f = &failures{}
			l.keys[k] = f
		}
		f.n++
		f.last = now
		if f.n >= lockoutAfter {
			f.until = now.Add(min(lockoutBase<<min(f.n-lockoutAfter, 20), lockoutMax))
		}
	}
}

// succeed clears keys.
func (l *lockout) succeed(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		delete(l.keys, k)
	}
}

func (l *lockout) evictLocked() {
	now := l.clock.Now()
	var oldest string
	var oldestAt time.Time
	for k, f := range l.keys {
		if now.Sub(f.last) > lockoutForget {
			delete(l.keys, k)
			continue
		}
		if oldest == "" || f.last.Before(oldestAt) {
			oldest, oldestAt = k, f.last
		}
	}
	if len(l.keys) >= maxTracked {
		delete(l.keys, oldest)
	}
}

// verifier checks producer passwords: argon2id is made to be slow, so at
// most a few run at once, and a password that matched the producer's
// current hash is remembered (as an HMAC under a key of this process, never
// the password) so clients that open a connection per message, as
// Alertmanager does, pay for one hash, not one per mail.
type verifier struct {
	sem chan struct{}
	key [32]byte

	mu sync.Mutex
	ok map[string]verified // producer name → the last password that matched

	// decoy is the hash the password of a name that is no producer is
	// checked against, so that an unknown name costs what a wrong password
	// costs: how long AUTH takes to fail does not tell a guesser which
	// producer names exist. Made at the first unknown name.
	decoy func() string

	hashes atomic.Int64 // argon2id checks run: what a failed login costs
}

type verified struct {
	mac  [32]byte
	hash string // the producer's hash it matched: a new password forgets it
}

func newVerifier(concurrent int) *verifier {
	v := &verifier{sem: make(chan struct{}, concurrent), ok: map[string]verified{},
		decoy: sync.OnceValue(func() string { return HashPassword(NewPassword()) })}
	_, _ = rand.Read(v.key[:])
	return v
}

func (v *verifier) mac(name, password string) [32]byte {
	h := hmac.New(sha256.New, v.key[:])
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// check reports whether password is producer p's.
func (v *verifier) check(ctx context.Context, p Producer, password string) (bool, error) {
	m := v.mac(p.Name, password)
	v.mu.Lock()
	prev, seen := v.ok[p.Name]
	v.mu.Unlock()
	if seen && prev.hash == p.Hash && hmac.Equal(prev.mac[:], m[:]) {
		return true, nil
	}
	select {
	case v.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	v.hashes.Add(1)
	ok := CheckPassword(p.Hash, password)
	<-v.sem
	if ok {
		v.mu.Lock()
		v.ok[p.Name] = verified{mac: m, hash: p.Hash}
		v.mu.Unlock()
	}
	return ok, nil
}

// errLockedOut is the reply while a key is locked: temporary, so a client
// with the right password succeeds later.
func errLockedOut(wait time.Duration) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("Too many failed logins; try again in %s", wait.Round(time.Second)+time.Second)}
}

// loginServer is the LOGIN SASL mechanism (draft-murchison-sasl-login,
// which go-sasl only has as a client): the server asks for the user name
// and the password in two challenges. Many SMTP clients (Grafana's,
// printers) use it.
type loginServer struct {
	auth func(username, password string) error
	user string
	step int
}

func newLoginServer(auth func(username, password string) error) sasl.Server {
	return &loginServer{auth: auth}
}

var errLoginUnexpected = errors.New("unexpected LOGIN response")

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step = 1
		if response != nil { // an initial response is the user name (RFC 4954 §4 allows it)
			s.user = string(response)
			s.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.auth(s.user, string(response))
	}
	return nil, true, errLoginUnexpected
}
