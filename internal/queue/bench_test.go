package queue_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// BenchmarkPublish is what the MAIL stream of the embedded server accepts
// per second, for each fsync setting: 2 KB messages with a Nats-Msg-Id,
// published asynchronously, as `relay bench` publishes. Under "always" each acknowledged publish is on disk first, so
// the disk's fsync rate bounds it; `relay bench` times the relay from its
// first publish, so this bounds the relay's ratio there too (BENCHMARKS.md).
func BenchmarkPublish(b *testing.B) {
	for _, sync := range []string{"always", "2m"} {
		b.Run("sync="+sync, func(b *testing.B) {
			env := queuetest.StartSync(b, sync)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := queue.EnsureStreams(ctx, env.JS, queue.StreamConfig{}); err != nil {
				b.Fatal(err)
			}
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
