package tokensvc

import (
	"github.com/prometheus/client_golang/prometheus"

	"relay365/internal/token"
)

// states is the closed set of token states (a label of relay_token_state).
var states = []token.State{token.StateHealthy, token.StateNeedsConsent, token.StateConfigError, token.StateTransient}

// unreadable is relay_token_state's state for a record that does not open
// (another key file sealed it, or it was rewritten): no token state can
// be read from it, and without a series of its own an account in that
// plight, quiet until its refresh token dies of disuse, would raise no
// alert (RelayTokenRecordUnreadable).
const unreadable = StatusUnreadable

// results is the closed set of relay_token_refresh_total's result label.
var results = []string{"ok", string(token.StateNeedsConsent), string(token.StateConfigError), string(token.StateTransient)}

// Metrics are the token service's Prometheus series. Labels are bounded:
// account is a registered alias, state and result are closed sets.
type Metrics struct {
	state   *prometheus.GaugeVec
	expiry  *prometheus.GaugeVec
	issued  *prometheus.GaugeVec
	refresh *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_token_state",
			Help: "Token state per account: 1 for the current state (healthy, needs_consent, config_error, transient, or unreadable: the sealed record does not open), 0 for the others. Every token service exports it; aggregate with max.",
		}, []string{"account", "state"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_token_expiry_timestamp_seconds",
			Help: "Unix time at which the account's stored access token expires.",
		}, []string{"account"}),
		issued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_token_last_refresh_timestamp_seconds",
			Help: "Unix time at which the account's stored access token was obtained (by a refresh or a consent). It is read from the token record, so unlike relay_token_refresh_total it survives restarts.",
		}, []string{"account"}),
		refresh: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_token_refresh_total",
			Help: "Calls to the identity platform made by this process, by account and result (ok, needs_consent, config_error, transient).",
		}, []string{"account", "result"}),
	}
	reg.MustRegister(m.state, m.expiry, m.issued, m.refresh)
	return m
}

// setRecord publishes a record's state and expiry.
func (m *Metrics) setRecord(rec token.Record) {
	for _, s := range states {
		v := 0.0
		if s == rec.EffectiveState() {
			v = 1
		}
		m.state.WithLabelValues(rec.Account, string(s)).Set(v)
	}
	m.state.WithLabelValues(rec.Account, unreadable).Set(0)
	m.expiry.WithLabelValues(rec.Account).Set(float64(rec.Expiry.Unix()))
	if !rec.LastRefresh.IsZero() {
		m.issued.WithLabelValues(rec.Account).Set(float64(rec.LastRefresh.Unix()))
	}
	for _, r := range results {
		m.refresh.WithLabelValues(rec.Account, r) // start every series at 0
	}
}

// markUnreadable marks the state of an account whose record does not open.
func (m *Metrics) markUnreadable(alias string) {
	for _, s := range states {
		m.state.WithLabelValues(alias, string(s)).Set(0)
	}
	m.state.WithLabelValues(alias, unreadable).Set(1)
}

// forget removes a deleted account's series.
func (m *Metrics) forget(alias string) {
	l := prometheus.Labels{"account": alias}
	m.state.DeletePartialMatch(l)
	m.expiry.DeletePartialMatch(l)
	m.issued.DeletePartialMatch(l)
	m.refresh.DeletePartialMatch(l)
}

func (m *Metrics) countRefresh(o token.Outcome) {
	if o.SMTPRefused {
		return // no refresh was made; relay_token_state shows it
	}
	m.refresh.WithLabelValues(o.Account, o.Result()).Inc()
}
