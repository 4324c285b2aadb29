package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/token/tokensvc"
)

// AccountStatus is one account on /status. It never holds a secret.
type AccountStatus struct {
	Alias       string    `json:"alias"`
	Mailbox     string    `json:"mailbox"`
	SMTP        string    `json:"smtp"`
	Auth        string    `json:"auth"`
	TokenState  string    `json:"token_state"` // healthy, needs_consent, config_error, transient, missing, unreadable, unknown
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	ErrorCodes  []int     `json:"error_codes,omitempty"` // AADSTS codes of the last failure
	Remedy      string    `json:"remedy,omitempty"`
	// Delivery is the account's lane: consumer, pause, connections.
	Delivery *relay.LaneStatus `json:"delivery,omitempty"`
}

// Status is the /status document.
type Status struct {
	NATSConnected bool            `json:"nats_connected"`
	QueueDepth    uint64          `json:"queue_depth"`
	DLQSize       uint64          `json:"dlq_size"`
	Accounts      []AccountStatus `json:"accounts"`
}

// Snapshot collects the status.
func (d *Daemon) Snapshot(ctx context.Context) (Status, error) {
	st := Status{NATSConnected: d.NC.Status() == nats.CONNECTED, Accounts: []AccountStatus{}}
	for name, dst := range map[string]*uint64{queue.StreamMail: &st.QueueDepth, queue.StreamDLQ: &st.DLQSize} {
		s, err := d.JS.Stream(ctx, name)
		if err != nil {
			return st, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return st, err
		}
		*dst = info.State.Msgs
	}
	accts, err := d.Accounts.List(ctx)
	if err != nil {
		return st, err
	}
	tokens, terr := d.tokenStates(ctx)
	lanes := map[string]relay.LaneStatus{}
	if d.Engine != nil {
		for _, l := range d.Engine.Status() {
			lanes[l.Account] = l
		}
	}
	for _, a := range accts {
		auth := "OAuth2 delegated (XOAUTH2)"
		if a.AppOnly {
			auth = "OAuth2 app-only (XOAUTH2)"
		}
		as := AccountStatus{Alias: a.Alias, Mailbox: a.Mailbox, SMTP: a.SMTPAddr, Auth: auth, TokenState: "unknown"}
		if t, ok := tokens[a.Alias]; ok {
			as.TokenState, as.TokenExpiry, as.LastRefresh, as.NextAttempt = t.State, t.Expiry, t.LastRefresh, t.NextAttempt
			as.LastError, as.ErrorCodes, as.Remedy = t.LastError, t.ErrorCodes, t.Remedy
		} else if terr != nil {
			as.LastError = terr.Error()
		}
		if l, ok := lanes[a.Alias]; ok {
			as.Delivery = &l
		}
		st.Accounts = append(st.Accounts, as)
	}
	return st, nil
}

// tokenStates reads token states from the store when this process holds
// the key, else asks the token service.
func (d *Daemon) tokenStates(ctx context.Context) (map[string]tokensvc.AccountStatus, error) {
	var list []tokensvc.AccountStatus
	var err error
	if d.Store != nil {
		list, err = tokensvc.Collect(ctx, d.Accounts, d.Store, d.cfg.Clock.Now())
	} else {
		var rep tokensvc.StatusReply
		rep, err = d.TokenClient.Status(ctx)
		list = rep.Accounts
	}
	out := make(map[string]tokensvc.AccountStatus, len(list))
	for _, a := range list {
		out[a.Account] = a
	}
	return out, err
}

func (d *Daemon) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := d.Snapshot(ctx)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// readyz: NATS connected, delivery running, at least one account with a
// usable token whose consumer is bound.
func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := d.Snapshot(ctx)
	switch {
	case err != nil:
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	case !st.NATSConnected:
		http.Error(w, "not ready: NATS disconnected", http.StatusServiceUnavailable)
		return
	}
	workers := d.cfg.Has(RoleWorkers)
	if workers && !d.Engine.Running() {
		http.Error(w, "not ready: delivery not running", http.StatusServiceUnavailable)
		return
	}
	usable := false
	for _, a := range st.Accounts {
		if a.TokenState == "healthy" || a.TokenState == "transient" {
			usable = true
			if !workers || (a.Delivery != nil && a.Delivery.Bound) {
				w.Write([]byte("ready\n"))
				return
			}
		}
	}
	if usable {
		http.Error(w, "not ready: no account's consumer bound yet", http.StatusServiceUnavailable)
		return
	}
	http.Error(w, "not ready: no account with a usable token (run authtool login)", http.StatusServiceUnavailable)
}
