package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/buildinfo"
	"relay365/internal/queue"
)

// unknownAccount labels mail for aliases that are not registered, so a
// producer inventing aliases cannot inflate the label set.
const unknownAccount = "unknown"

var (
	pendingDesc = prometheus.NewDesc("relay_queue_pending",
		"Messages in MAIL not yet handed to a worker, by account (its consumer's pending count; mail for unregistered aliases counts under account=\"unknown\").",
		[]string{"account"}, nil)
	ackPendingDesc = prometheus.NewDesc("relay_queue_ack_pending",
		"Messages handed to a worker and not yet acked, by account: sending now, or waiting for a retry (NakWithDelay).",
		[]string{"account"}, nil)
	dlqDesc = prometheus.NewDesc("relay_dlq_messages",
		"Dead letters in MAIL_DLQ by account (unregistered aliases under account=\"unknown\").",
		[]string{"account"}, nil)
)

// queueCollector reads the streams and consumers on each scrape (a few
// JetStream info requests, bounded by timeout), so the gauges are exactly
// what JetStream holds and no process has to keep them up to date. Every
// process exports the same values; aggregate with max. A scrape that
// cannot read them (NATS down, timeout) omits the series and counts
// relay_queue_collect_errors_total rather than failing all of /metrics.
type queueCollector struct {
	js       jetstream.JetStream
	accounts *account.Registry
	timeout  time.Duration
	errors   prometheus.Counter
	log      zerolog.Logger
}

func newQueueCollector(js jetstream.JetStream, accounts *account.Registry, log zerolog.Logger) *queueCollector {
	return &queueCollector{
		js: js, accounts: accounts, timeout: 3 * time.Second, log: log,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_queue_collect_errors_total",
			Help: "Scrapes that could not read the MAIL and MAIL_DLQ state (the queue series are missing from those scrapes).",
		}),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
	ch <- dlqDesc
	c.errors.Describe(ch)
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.collect(ctx, ch); err != nil {
		c.errors.Inc()
		c.log.Warn().Err(err).Msg("queue metrics unreadable in this scrape")
	}
	c.errors.Collect(ch)
}

// queueGauges are one scrape's values, by account.
type queueGauges struct{ pending, ackPending, dlq map[string]float64 }

func (c *queueCollector) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	g, err := c.read(ctx)
	if err != nil {
		return err
	}
	for desc, m := range map[*prometheus.Desc]map[string]float64{pendingDesc: g.pending, ackPendingDesc: g.ackPending, dlqDesc: g.dlq} {
		for alias, v := range m {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, alias)
		}
	}
	return nil
}

// read gathers everything first, so a failure halfway emits nothing
// rather than a partial, misleading set.
func (c *queueCollector) read(ctx context.Context) (queueGauges, error) {
	accts, err := c.accounts.List(ctx)
	if err != nil {
		return queueGauges{}, err
	}
	g := queueGauges{pending: map[string]float64{unknownAccount: 0}, ackPending: map[string]float64{}, dlq: map[string]float64{unknownAccount: 0}}
	known := map[string]bool{}
	for _, a := range accts {
		known[a.Alias] = true
		g.pending[a.Alias], g.ackPending[a.Alias], g.dlq[a.Alias] = 0, 0, 0
	}
	label := func(alias string) string {
		if known[alias] {
			return alias
		}
		return unknownAccount
	}
	mail, err := queue.CountByAccount(ctx, c.js, queue.StreamMail)
	if err != nil {
		return queueGauges{}, err
	}
	for alias, n := range mail {
		if !known[alias] {
			g.pending[unknownAccount] += float64(n) // no consumer: all of it waits
		}
	}
	for alias := range known {
		cons, err := c.js.Consumer(ctx, queue.StreamMail, queue.AccountConsumer(alias))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			// No worker has bound it yet: everything stored waits.
			g.pending[alias] = float64(mail[alias])
			continue
		}
		if err != nil {
			return queueGauges{}, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return queueGauges{}, err
		}
		g.pending[alias], g.ackPending[alias] = float64(info.NumPending), float64(info.NumAckPending)
	}
	dlq, err := queue.CountByAccount(ctx, c.js, queue.StreamDLQ)
	if err != nil {
		return queueGauges{}, err
	}
	for alias, n := range dlq {
		g.dlq[label(alias)] += float64(n)
	}
	return g, nil
}

// buildInfo is relay_build_info: constant 1, with the module version, VCS
// revision and Go version this binary was built from (the same as `relay
// version` prints).
func buildInfo() prometheus.Collector {
	bi := buildinfo.Read()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "relay_build_info",
		Help:        "Always 1; the labels say which build runs (module version, VCS revision, Go version).",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	})
	g.Set(1)
	return g
}
