// Package crashpoint lets a crash test kill `relay serve` at an exact
// point of its work, such as between storing a large message's body and
// publishing the MAIL message that names it, where a SIGKILL sent from
// outside at a random moment would almost never land.
//
// Hit marks such a point. In the shipped binary it does nothing and
// compiles to nothing (off.go, built without the crashpoints tag): no
// environment variable can make a production relay kill itself, which
// internal/layout's tests check. A binary built with
//
//	go build -tags crashpoints ./cmd/relay
//
// reads RELAY_CRASHPOINT when it starts: "NAME" kills the process with
// SIGKILL at the first Hit(NAME), "NAME:N" at the N-th. The process dies
// as under kill -9: no deferred call, no shutdown, no flush; Hit never
// returns once it has sent the signal. The crash tests in internal/daemon
// (build tag crash) build the relay so.
package crashpoint

// The points, each named once here so a test and the code it kills
// cannot disagree.
const (
	// IngressBodyStored: the SMTP front door has stored a large message's
	// body and not yet published the MAIL message that names it (the
	// client has had no reply to its DATA).
	IngressBodyStored = "ingress-body-stored"
	// WorkerAcked: a worker has sent a message with a stored body and
	// JetStream has confirmed its ack; the body is not yet deleted.
	WorkerAcked = "worker-acked"
	// TokenAnswered: the token service has the identity platform's
	// answer to a refresh (a rotated refresh token) and has not yet
	// stored it; the record still holds the previous refresh token and
	// this process's lease.
	TokenAnswered = "token-answered"
)

// Env is the variable a crashpoints build reads.
const Env = "RELAY_CRASHPOINT"
