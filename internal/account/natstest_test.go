package account

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue/queuetest"
)

// startJetStream runs an embedded JetStream server for one test.
func startJetStream(t *testing.T) jetstream.JetStream { return queuetest.Start(t).JS }
