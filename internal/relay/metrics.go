package relay

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the worker's Prometheus series. Labels are bounded: account
// is a configured alias (or "unknown"), outcome and class are closed sets,
// code is an SMTP reply code.
type Metrics struct {
	messages *prometheus.CounterVec
	replies  *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewMetrics registers the worker's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_messages_total",
			Help: "Messages handled by the workers, by account and outcome (sent, retried, paused, dead_lettered, duplicate).",
		}, []string{"account", "outcome"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_smtp_replies_total",
			Help: "Final SMTP replies and network failures per delivery attempt, by account, reply code (0: no reply) and class.",
		}, []string{"account", "code", "class"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_send_duration_seconds",
			Help:    "Time of one delivery attempt: token, connect, STARTTLS, AUTH, transaction.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	reg.MustRegister(m.messages, m.replies, m.duration)
	return m
}

func (m *Metrics) outcome(account, outcome string) {
	m.messages.WithLabelValues(account, outcome).Inc()
}

func (m *Metrics) reply(account string, code int, class Class) {
	m.replies.WithLabelValues(account, strconv.Itoa(code), string(class)).Inc()
}
