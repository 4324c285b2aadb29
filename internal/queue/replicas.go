package queue

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// WithReplicas returns js with every stream and KV bucket it creates or
// updates given n replicas unless the config names a number itself. The
// daemon hands it to everything that opens a bucket (the account registry,
// the token store, the pacing and idempotency buckets), so --replicas 3
// covers them all without each package taking a replicas argument. n <= 1
// returns js unchanged.
func WithReplicas(js jetstream.JetStream, n int) jetstream.JetStream {
	if n <= 1 {
		return js
	}
	return replicated{JetStream: js, n: n}
}

type replicated struct {
	jetstream.JetStream
	n int
}

func (r replicated) kv(c jetstream.KeyValueConfig) jetstream.KeyValueConfig {
	if c.Replicas == 0 {
		c.Replicas = r.n
	}
	return c
}

func (r replicated) stream(c jetstream.StreamConfig) jetstream.StreamConfig {
	if c.Replicas == 0 {
		c.Replicas = r.n
	}
	return c
}

func (r replicated) CreateKeyValue(ctx context.Context, c jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.CreateKeyValue(ctx, r.kv(c))
}

func (r replicated) UpdateKeyValue(ctx context.Context, c jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.UpdateKeyValue(ctx, r.kv(c))
}

func (r replicated) CreateOrUpdateKeyValue(ctx context.Context, c jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return r.JetStream.CreateOrUpdateKeyValue(ctx, r.kv(c))
}

func (r replicated) CreateStream(ctx context.Context, c jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.CreateStream(ctx, r.stream(c))
}

func (r replicated) UpdateStream(ctx context.Context, c jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.UpdateStream(ctx, r.stream(c))
}

func (r replicated) CreateOrUpdateStream(ctx context.Context, c jetstream.StreamConfig) (jetstream.Stream, error) {
	return r.JetStream.CreateOrUpdateStream(ctx, r.stream(c))
}
