package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"relay365/internal/submit"
)

// Metrics are the engine's Prometheus series. Labels are bounded: account
// is a configured alias (or "unknown"), outcome, class and reason are
// closed sets, code is an SMTP reply code RFC 5321 or RFC 4954 defines, or
// its class ("4xx") for any other (submit.CodeLabel).
type Metrics struct {
	messages    *prometheus.CounterVec
	replies     *prometheus.CounterVec
	duration    prometheus.Histogram
	pacingWait  *prometheus.HistogramVec
	connections *prometheus.CounterVec
	paused      *prometheus.GaugeVec
	pauses      *prometheus.CounterVec
	unknown     *prometheus.CounterVec
	mismatches  *prometheus.CounterVec
}

// notPaused is relay_account_paused's reason while an account sends.
const notPaused = "none"

// Outcomes of one delivery attempt (relay_messages_total).
const (
	outcomeSent         = "sent"          // Office 365 answered 250 for every transaction
	outcomeDuplicate    = "duplicate"     // already sent (idempotency marker): acked without sending
	outcomeRetried      = "retried"       // NakWithDelay on the retry schedule
	outcomePaused       = "paused"        // the account paused; the message waits
	outcomeRequeued     = "requeued"      // not sendable now (paused, a copy with its id being sent) at its last delivery: put back as a fresh message
	outcomeDeferred     = "deferred"      // sent to the others; a copy queued for the recipients refused for now (4xx at RCPT)
	outcomeDeadLettered = "dead_lettered" // copied to MAIL_DLQ with the reason
	outcomeExpired      = "expired"       // older than the queue lifetime: copied to MAIL_DLQ, reason "expired after …"
)

// NewMetrics registers the engine's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_messages_total",
			Help: "Delivery attempts by account and outcome: sent, duplicate, retried, paused, requeued (not sendable now at its last delivery, as its account paused: put back as a fresh message), deferred (a copy queued for recipients refused for now at RCPT), dead_lettered, expired.",
		}, []string{"account", "outcome"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_smtp_replies_total",
			Help: "Final SMTP replies and network failures per transaction or AUTH, by account, reply code (0: no reply; a code RFC 5321 and RFC 4954 do not define counts as its class, 2xx to 5xx, or other) and class.",
		}, []string{"account", "code", "class"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_send_duration_seconds",
			Help:    "Time of one delivery attempt: pacing, token, session, transactions.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		pacingWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_pacing_wait_seconds",
			Help:    "Time one SMTP transaction waited for the mailbox's pacing budget (0 when it had room at once), by account; a wait beyond a minute pauses the account instead.",
			Buckets: []float64{0, .5, 1, 2.5, 5, 10, 20, 30, 60},
		}, []string{"account"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_message_unknown_fields_total",
			Help: "JSON fields of published messages the relay does not know and ignored, by account (the names are logged once per account and field).",
		}, []string{"account"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_smtp_connections_total",
			Help: "SMTP sessions opened (connect, STARTTLS, AUTH) by account; pooled sessions carry many messages each.",
		}, []string{"account"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_account_paused",
			Help: "1 while an account's delivery is paused (it cannot send; its mail waits queued), with reason the class of the condition; one series per account, reason \"none\" and value 0 while it sends.",
		}, []string{"account", "reason"}),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_account_pauses_total",
			Help: "Times an account's delivery was paused, by class of the condition.",
		}, []string{"account", "class"}),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_account_binding_mismatch_total",
			Help: "SMTP sessions not opened because the account record in relay_accounts disagrees with the binding sealed with its tokens (smtp_addr, ca_file, client_id): the record was rewritten after consent. Every account has a series from the start, so the first refusal is an increase.",
		}, []string{"account"}),
	}
	reg.MustRegister(m.messages, m.replies, m.duration, m.pacingWait, m.connections, m.paused, m.pauses, m.unknown, m.mismatches)
	return m
}

// lane makes the per-account counters that alerts take increase() of
// exist at 0, so their first event counts.
func (m *Metrics) lane(account string) {
	m.mismatches.WithLabelValues(account)
	m.messages.WithLabelValues(account, outcomeSent) // RelayNoSendsWhileQueued: the first send ends it
	m.messages.WithLabelValues(account, outcomeDeadLettered)
	m.messages.WithLabelValues(account, outcomeExpired)
}

func (m *Metrics) bindingMismatch(account string) {
	m.mismatches.WithLabelValues(account).Inc()
}

// setPaused makes the account's one relay_account_paused series say
// whether it is paused and why (class; "" when it sends).
func (m *Metrics) setPaused(account string, class Class) {
	m.paused.DeletePartialMatch(prometheus.Labels{"account": account})
	if class == "" {
		m.paused.WithLabelValues(account, notPaused).Set(0)
		return
	}
	m.paused.WithLabelValues(account, string(class)).Set(1)
}

// forget drops a removed account's gauges.
func (m *Metrics) forget(account string) {
	m.paused.DeletePartialMatch(prometheus.Labels{"account": account})
	m.pacingWait.DeletePartialMatch(prometheus.Labels{"account": account})
	m.unknown.DeletePartialMatch(prometheus.Labels{"account": account})
}

func (m *Metrics) outcome(account, outcome string) {
	m.messages.WithLabelValues(account, outcome).Inc()
}

// reply counts a reply; its code label is bounded (submit.CodeLabel).
func (m *Metrics) reply(account string, code int, class Class) {
	m.replies.WithLabelValues(account, submit.CodeLabel(code), string(class)).Inc()
}

// sessionsDesc is relay_smtp_sessions, read from the lanes on each scrape.
var sessionsDesc = prometheus.NewDesc("relay_smtp_sessions",
	"SMTP sessions open now (idle in the pool or sending) by account; at most the account's connection limit.",
	[]string{"account"}, nil)

// lanesDesc and lanesBoundDesc count the lanes without an account label:
// one series each whatever the number of accounts, so "every lane bound"
// (issue 18: all 2,000 within 10 s of start; `relay bench --accounts`
// polls it) is one cheap read instead of a per-account scan of /status.
var (
	lanesDesc = prometheus.NewDesc("relay_lanes",
		"Accounts this engine delivers for (one lane each).", nil, nil)
	lanesBoundDesc = prometheus.NewDesc("relay_lanes_bound",
		"Lanes whose JetStream consumer is bound (they receive their account's mail); below relay_lanes while lanes start or rebind.", nil, nil)
)

// laneCollector reports the lanes' live state on scrape, so the gauges can
// never drift from the pools and consumers they describe.
type laneCollector struct{ e *Engine }

func (c laneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- lanesDesc
	ch <- lanesBoundDesc
}

func (c laneCollector) Collect(ch chan<- prometheus.Metric) {
	lanes := c.e.Status()
	bound := 0
	for _, l := range lanes {
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(l.Sessions), l.Account)
		if l.Bound {
			bound++
		}
	}
	ch <- prometheus.MustNewConstMetric(lanesDesc, prometheus.GaugeValue, float64(len(lanes)))
	ch <- prometheus.MustNewConstMetric(lanesBoundDesc, prometheus.GaugeValue, float64(bound))
}
