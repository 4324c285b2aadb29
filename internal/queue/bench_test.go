package queue_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// benchStreams starts a server with the fsync setting sync and the
// relay's streams on it, with a context for the benchmark.
func benchStreams(b *testing.B, sync string) (*queuetest.Env, context.Context) {
	b.Helper()
	env := queuetest.StartSync(b, sync)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	b.Cleanup(cancel)
	if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	return env, ctx
}

// BenchmarkPublish is what the MAIL stream of the embedded server accepts
// per second, for each fsync setting: 2 KB messages with a Nats-Msg-Id,
// published asynchronously, as `relay bench` publishes. Under "always" each acknowledged publish is on disk first, so
// the disk's fsync rate bounds it; `relay bench` times the relay from its
// first publish, so this bounds the relay's ratio there too (BENCHMARKS.md).
func BenchmarkPublish(b *testing.B) {
	for _, sync := range []string{"always", "2m"} {
		b.Run("sync="+sync, func(b *testing.B) {
			env, ctx := benchStreams(b, sync)
			data := make([]byte, 2048)
			subject := queue.Subject("bench")
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := env.JS.PublishAsync(subject, data, jetstream.WithMsgID(strconv.Itoa(i)), jetstream.WithStallWait(time.Minute)); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-env.JS.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal("publishes not acknowledged")
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkPublishBatch is BenchmarkPublish's messages handed over with
// PublishBatch in calls of n messages, one call at a time (n = 1: Publish,
// one message at a time). Under "always" an atomic batch is committed
// with one fsync where single publishes cost one each, but nats-server
// first stages each batch in a file store of its own (directories,
// files, a sync): small batches pay more than they save (BENCHMARKS.md).
func BenchmarkPublishBatch(b *testing.B) {
	for _, sync := range []string{"always", "2m"} {
		for _, n := range []int{1, 4, 16, 100} {
			b.Run(fmt.Sprintf("sync=%s/n=%d", sync, n), func(b *testing.B) {
				env, ctx := benchStreams(b, sync)
				data := make([]byte, 2048)
				items := make([]queue.BatchItem, 0, b.N)
				for i := range b.N {
					items = append(items, queue.BatchItem{Account: "bench", ID: strconv.Itoa(i), Data: data})
				}
				b.ReportAllocs()
				b.ResetTimer()
				for lo := 0; lo < b.N; lo += n {
					chunk := items[lo:min(lo+n, b.N)]
					var err error
					if n == 1 {
						_, err = queue.Publish(ctx, env.JS, chunk[0].Account, chunk[0].ID, chunk[0].Data)
					} else {
						_, err = queue.PublishBatch(ctx, env.JS, chunk)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
