package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Streams and buckets are opened, not made, when they are already as the
// relay wants them. Under deploy/nats/auth.conf a worker or the token
// service may read and write its buckets but not create or change a
// stream (that right is what a mirror of relay_tokens or a rewritten
// bucket would need), so their processes must find everything in place:
// the relay makes it on its embedded server, and `relay setup` makes it on
// a cluster as the admin. Whoever has the right and finds a setting that
// differs (an upgrade, a new --replicas) updates it.

// OpenKeyValue opens the bucket c names, creating or updating it only when
// it is missing or its history, TTL, storage or size limit differ from c.
// An update of a bucket that exists is bounded by updateTimeout: a NATS
// user without the right to change streams gets no answer to it (the
// server only reports the violation asynchronously), and the error then
// says what differs and to run relay setup, instead of hanging until ctx
// ends.
func OpenKeyValue(ctx context.Context, js jetstream.JetStream, c jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	differs := ""
	if kv, err := js.KeyValue(ctx, c.Bucket); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			if differs = kvDiff(st, c); differs == "" {
				return kv, nil
			}
		}
	}
	if differs != "" {
		uctx, cancel := context.WithTimeout(ctx, updateTimeout)
		defer cancel()
		kv, err := js.CreateOrUpdateKeyValue(uctx, c)
		if err != nil {
			return nil, fmt.Errorf("KV bucket %s has settings this version changes (%s) and could not be updated: %w (a NATS user that may not change streams cannot: run `relay setup` with the admin credentials first)", c.Bucket, differs, err)
		}
		return kv, nil
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s: %w%s", c.Bucket, err, setupHint(err))
	}
	return kv, nil
}

// updateTimeout bounds the update of an existing bucket; an allowed one
// is answered in milliseconds.
const updateTimeout = 10 * time.Second

// kvDiff says how the bucket differs from c ("history 5, want 1"), or ""
// when it is as c wants it.
func kvDiff(st jetstream.KeyValueStatus, c jetstream.KeyValueConfig) string {
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return "unknown settings"
	}
	cfg := bs.StreamInfo().Config
	var d []string
	if history := max(int64(c.History), 1); st.History() != history {
		d = append(d, fmt.Sprintf("history %d, want %d", st.History(), history))
	}
	if st.TTL() != c.TTL {
		d = append(d, fmt.Sprintf("TTL %s, want %s", st.TTL(), c.TTL))
	}
	if cfg.Storage != c.Storage {
		d = append(d, fmt.Sprintf("storage %s, want %s", cfg.Storage, c.Storage))
	}
	if c.MaxBytes != 0 && cfg.MaxBytes != c.MaxBytes {
		d = append(d, fmt.Sprintf("max bytes %d, want %d", cfg.MaxBytes, c.MaxBytes))
	}
	return strings.Join(d, "; ")
}

// openStream is OpenKeyValue for a stream: it creates c's stream when it
// is missing, and when differs says how the stream found differs from c
// ("" when it does not), updates it. The update is bounded by
// updateTimeout, as OpenKeyValue's (a user that may not change streams
// gets no answer), and its error says what differs and to run relay
// setup.
func openStream(ctx context.Context, js jetstream.JetStream, c jetstream.StreamConfig, differs func(have jetstream.StreamConfig) string) error {
	s, err := js.Stream(ctx, c.Name)
	if err != nil {
		if _, err := js.CreateOrUpdateStream(ctx, c); err != nil {
			return fmt.Errorf("create stream %s: %w%s", c.Name, err, setupHint(err))
		}
		return nil
	}
	d := differs(s.CachedInfo().Config)
	if d == "" {
		return nil
	}
	uctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(uctx, c); err != nil {
		return fmt.Errorf("stream %s has settings this version changes (%s) and could not be updated: %w (a NATS user that may not change streams cannot: run `relay setup` with the admin credentials first)", c.Name, d, err)
	}
	return nil
}

// keepingDiff is the differs of MAIL and MAIL_DLQ: the settings that
// decide what the stream keeps and for how long (a MaxBytes,
// MaxConsumers or MaxMsgSize of 0 in c is not compared).
func keepingDiff(c jetstream.StreamConfig) func(have jetstream.StreamConfig) string {
	return func(have jetstream.StreamConfig) string {
		var d []string
		add := func(differ bool, what string, h, w any) {
			if differ {
				d = append(d, fmt.Sprintf("%s %v, want %v", what, h, w))
			}
		}
		add(!slices.Equal(have.Subjects, c.Subjects), "subjects", have.Subjects, c.Subjects)
		add(have.Retention != c.Retention, "retention", have.Retention, c.Retention)
		add(have.Storage != c.Storage, "storage", have.Storage, c.Storage)
		add(have.MaxAge != c.MaxAge, "max age", have.MaxAge, c.MaxAge)
		add(have.Duplicates != c.Duplicates, "duplicate window", have.Duplicates, c.Duplicates)
		add(have.Discard != c.Discard, "discard", have.Discard, c.Discard)
		add(c.MaxBytes != 0 && have.MaxBytes != c.MaxBytes, "max bytes", have.MaxBytes, c.MaxBytes)
		add(c.MaxConsumers != 0 && have.MaxConsumers != c.MaxConsumers, "max consumers", have.MaxConsumers, c.MaxConsumers)
		add(c.MaxMsgSize != 0 && have.MaxMsgSize != c.MaxMsgSize, "max message size", have.MaxMsgSize, c.MaxMsgSize)
		add(have.AllowAtomicPublish != c.AllowAtomicPublish, "atomic batch publish", have.AllowAtomicPublish, c.AllowAtomicPublish)
		return strings.Join(d, "; ")
	}
}

// setupHint says what to do when the NATS user may not make or change a
// stream.
func setupHint(err error) string {
	if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		return " (this NATS user may not create or change streams: run `relay setup` with the admin credentials first)"
	}
	return ""
}

// CASLost recognises a lost compare-and-set on a KV key: a Create whose
// key exists, or an Update whose revision is no longer the last. The
// error differs between Create, Update and replicated buckets: nats.go
// wraps "wrong last sequence" (10071, or 10164 on a replicated stream) in
// ErrKeyRevisionMismatch, ErrKeyExists matches 10071, and the raw API
// codes are checked as well (docs/design.md §7).
func CASLost(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
