package token

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue/queuetest"
)

// startJetStream runs an embedded JetStream server for one test.
func startJetStream(t *testing.T) jetstream.JetStream { return queuetest.Start(t).JS }

// startServer runs the embedded server and returns its client URL.
func startServer(t *testing.T) string { return queuetest.Start(t).URL }

// connectJetStream opens a new connection (one per simulated process).
func connectJetStream(t *testing.T, url string) jetstream.JetStream { return queuetest.Connect(t, url) }
