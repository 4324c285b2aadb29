package relay_test

import (
	"fmt"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/fakeo365"
	"relay365/internal/pacing"
	"relay365/internal/relay"
)

// BenchmarkDeliver: messages published (one publisher, as fast as the
// PubAcks come) and delivered by the engine to the fake Office 365 (its
// limits off) over C sessions of one mailbox, timed from the first publish
// to the last 250, in one process. It reports msg/s and the stream writes
// per message: MAIL (the publish), relay_sent (the idempotency marker)
// and relay_pacing (the group-committed reservations), each a synced
// write under sync always. The ack's removal from MAIL is not a stream
// message and is not counted here. `relay bench` measures the deployed
// shape (separate processes); this one isolates the engine.
//
//	go test -run '^$' -bench BenchmarkDeliver -benchtime 3000x ./internal/relay
func BenchmarkDeliver(b *testing.B) {
	for _, sync := range []string{"always", "1s"} {
		for _, conns := range []int{1, 4} {
			b.Run(fmt.Sprintf("sync=%s/conns=%d", sync, conns), func(b *testing.B) {
				benchDeliver(b, sync, conns)
			})
		}
	}
}

var countedStreams = []string{"MAIL", "KV_" + relay.SentBucket, "KV_" + pacing.Bucket}

func benchDeliver(b *testing.B, sync string, conns int) {
	h := newHarness(b, setup{sync: sync, fake: fakeo365.Config{CountOnly: true, MaxConns: -1}})
	h.enroll("bench", "bench@contoso.com", "contoso", func(a *account.Account) { a.MaxConns = conns })
	base := h.fake.Accepted() // the consent test mail
	last := func() (n uint64) {
		for _, name := range countedStreams {
			s, err := h.js.Stream(h.ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			info, err := s.Info(h.ctx)
			if err != nil {
				b.Fatal(err)
			}
			n += info.State.LastSeq
		}
		return n
	}
	before := last()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		h.publish("bench", fmt.Sprintf("bench-%d", i), "bench")
	}
	if _, err := h.fake.WaitMessages(h.ctx, base+b.N); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64(last()-before)/float64(b.N), "writes/msg")
}
