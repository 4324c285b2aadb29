// Package kvwatch turns a JetStream KV watch into a channel of decoded
// values, for the relay's buckets (accounts, tokens) whose readers react to
// changes instead of polling.
//
// Failure semantics: the channel first carries every current key (Initial
// set), then each change, and is closed when ctx ends or the watcher stops. Deletes and
// purges arrive as entries with Deleted set and no value. Decoding errors
// are the decoder's to report inside T; the stream goes on.
package kvwatch

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Entry is one key's change as a watch delivers it.
type Entry struct {
	Key      string
	Revision uint64
	Deleted  bool   // deleted or purged
	Value    []byte // nil when Deleted
	// Initial marks the values the watch found when it started, as
	// opposed to changes made while it watched.
	Initial bool
}

// Watch watches every key of kv and sends decode(entry) for each change.
func Watch[T any](ctx context.Context, kv jetstream.KeyValue, decode func(Entry) T) (<-chan T, error) {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch KV bucket %s: %w", kv.Bucket(), err)
	}
	out := make(chan T, 16)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		initial := true
		for {
			var e jetstream.KeyValueEntry
			select {
			case <-ctx.Done():
				return
			case entry, ok := <-w.Updates():
				if !ok {
					return
				}
				e = entry
			}
			if e == nil {
				initial = false // end of the initial values
				continue
			}
			ent := Entry{Key: e.Key(), Revision: e.Revision(), Deleted: e.Operation() != jetstream.KeyValuePut, Initial: initial}
			if !ent.Deleted {
				ent.Value = e.Value()
			}
			select {
			case out <- decode(ent):
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
