package ingress

import "github.com/prometheus/client_golang/prometheus"

// result is what became of one message handed over by SMTP: a closed set,
// as it is a metric label.
type result string

const (
	resultAccepted    result = "accepted"    // queued: 250 after the PubAck
	resultTooLarge    result = "too_large"   // 552 5.3.4
	resultNotAllowed  result = "not_allowed" // 550 5.7.1: account or From the producer may not use
	resultInvalid     result = "invalid"     // 554 5.6.0: cannot be parsed or can never be sent
	resultUnavailable result = "unavailable" // 451: NATS down, or no account registered yet
	resultFull        result = "full"        // 452 4.3.1: the MAIL stream has no room
)

type metrics struct {
	messages     *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	refusedConns *prometheus.CounterVec
	reg          prometheus.Registerer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg: reg,
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ingress_messages_total",
			Help: "Messages handed over by SMTP submission, by producer (a registered name, or none) and result (accepted, too_large, not_allowed, invalid, unavailable, full).",
		}, []string{"producer", "result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ingress_auth_failures_total",
			Help: "Failed SMTP AUTH attempts: bad_credentials (unknown producer or wrong password), locked_out (refused during the backoff) or cleartext (PLAIN or LOGIN before TLS, answered 538; the password is not checked).",
		}, []string{"reason"}),
		refusedConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ingress_refused_connections_total",
			Help: "SMTP connections refused by the connection limits, by limit (total or per_ip) and reply (421, or none: closed unanswered while connlimit.MaxRefusing refusals were running, or the client failed the implicit TLS handshake or the write).",
		}, []string{"limit", "reply"}),
	}
	reg.MustRegister(m.messages, m.authFailures, m.refusedConns)
	for _, r := range []string{"bad_credentials", "locked_out", "cleartext"} {
		m.authFailures.WithLabelValues(r)
	}
	for _, limit := range []string{"total", "per_ip"} {
		for _, reply := range []string{"421", "none"} {
			m.refusedConns.WithLabelValues(limit, reply)
		}
	}
	return m
}

// sessionsFunc registers relay_ingress_sessions, read from the server.
func (m *metrics) sessionsFunc(f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "relay_ingress_sessions",
		Help: "SMTP submission sessions open now (past EHLO).",
	}, f))
}

func (m *metrics) message(producer string, r result) {
	m.messages.WithLabelValues(producer, string(r)).Inc()
}
