package daemon

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"strings"
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
	// TokenServiceError: a workers-only relay asked the token service
	// for the accounts' token states and got no answer (no process with
	// --roles tokens runs or reaches NATS).
	TokenServiceError string `json:"token_service_error,omitempty"`
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
	if terr != nil && d.Store == nil {
		st.TokenServiceError = terr.Error()
	}
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

//go:embed status.html
var statusHTML string

// statusPage is /status for people. html/template escapes every value
// (an account's last error is text from Microsoft or an SMTP server).
var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{"until": until}).Parse(statusHTML))

// statusView is what the page shows: the snapshot, when it was taken,
// and what could not be read.
type statusView struct {
	Status
	Now   time.Time
	Error string
}

// until says how far t is from now, for people: "in 53m", "2m ago".
func until(now, t time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d < 0 {
		return (-d).String() + " ago"
	}
	return "in " + d.String()
}

// statusTimeout bounds the snapshot behind /status and /readyz, and a
// request's wait for it; the HTTP server's write timeout is longer.
const statusTimeout = 5 * time.Second

// status serves the snapshot as JSON (the default, for scripts) or as an
// HTML page when the client prefers text/html (a browser), or when asked
// with ?format=html; ?format=json forces JSON.
// starting answers 503 with what Start is doing until it is done; it
// reports whether it did.
func (d *Daemon) starting(w http.ResponseWriter) bool {
	if d.started.Load() {
		return false
	}
	phase, _ := d.phase.Load().(string)
	http.Error(w, "not ready: "+phase, http.StatusServiceUnavailable)
	return true
}

func (d *Daemon) status(w http.ResponseWriter, r *http.Request) {
	if d.starting(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
	defer cancel()
	st, err := d.snapshots.Do(ctx)
	code := http.StatusOK
	if err != nil {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Vary", "Accept")
	if wantsHTML(r) {
		page := statusView{Status: st, Now: d.cfg.Clock.Now()}
		if err != nil {
			page.Error = err.Error()
		}
		var buf bytes.Buffer
		if terr := statusPage.Execute(&buf, page); terr != nil {
			http.Error(w, terr.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(code)
		w.Write(buf.Bytes())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// wantsHTML: ?format= decides if given; else text/html must come before
// any JSON type in Accept (browsers list it first; curl sends */*).
func wantsHTML(r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "html":
		return true
	case "json":
		return false
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		switch strings.TrimSpace(mt) {
		case "text/html", "application/xhtml+xml":
			return true
		case "application/json":
			return false
		}
	}
	return false
}

// readyz: NATS connected, delivery running, at least one account with a
// usable token whose consumer is bound.
func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	if d.starting(w) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
	defer cancel()
	st, err := d.snapshots.Do(ctx)
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
	if st.TokenServiceError != "" {
		// The states are unknown, not bad: send the operator to the
		// token service, not to authtool login.
		http.Error(w, "not ready: the token service does not answer (is a relay with --roles tokens running?): "+st.TokenServiceError, http.StatusServiceUnavailable)
		return
	}
	http.Error(w, "not ready: no account with a usable token (run authtool login)", http.StatusServiceUnavailable)
}
