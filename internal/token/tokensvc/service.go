package tokensvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/token"
)

// Config configures a token service.
type Config struct {
	NC       *nats.Conn
	Store    *token.Store
	Accounts *account.Registry
	// Margin: access tokens are refreshed this long before they expire
	// (jittered, see refresher.go); default 5m.
	Margin time.Duration
	// LeaseTTL bounds one refresh before another process may take over;
	// default 60s, or a third of Margin if that is shorter.
	LeaseTTL time.Duration
	// LeaseWait bounds how long a request waits for another replica's
	// refresh before it is answered 503 (try again); default a third of
	// LeaseTTL, at most 20s (token.SourceConfig.LeaseWait).
	LeaseWait time.Duration
	// HTTPClient for the identity platform (default: 30s timeout,
	// HTTPS_PROXY/NO_PROXY; an account's proxy_url overrides the proxy).
	HTTPClient *http.Client
	// Clock drives expiry decisions and the refresh schedule; default real.
	Clock clock.Clock
	// Instance names this process in leases, events and token.status;
	// default <hostname>-<pid>.
	Instance string
	// Registerer receives the relay_token_* series (required).
	Registerer prometheus.Registerer
	Log        zerolog.Logger
	// MaxConcurrent bounds requests handled at once; default 256.
	MaxConcurrent int
}

// Service is one running token service replica: the relay-tokens micro
// endpoints, the proactive refresher and the metrics and events of every
// refresh it makes.
type Service struct {
	cfg     Config
	src     *token.Source
	metrics *Metrics
	micro   micro.Service
	ref     *refresher
	log     zerolog.Logger

	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	refDone   chan struct{}
	sem       chan struct{}
	mu        sync.Mutex
	closed    bool
	inflight  sync.WaitGroup
	closeOnce sync.Once
}

// Start opens the service: endpoints token.get, token.refresh and
// token.status in queue group "q" (each request goes to one replica), and
// the proactive refresher.
func Start(cfg Config) (*Service, error) {
	if cfg.NC == nil || cfg.Store == nil || cfg.Accounts == nil || cfg.Registerer == nil {
		return nil, errors.New("tokensvc.Start: NC, Store, Accounts and Registerer are required")
	}
	if cfg.Margin <= 0 {
		cfg.Margin = token.DefaultMargin
	}
	if cfg.LeaseTTL <= 0 {
		// A dead refresher's lease must end well inside the margin, so a
		// survivor refreshes before the token expires.
		cfg.LeaseTTL = min(60*time.Second, cfg.Margin/3)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 256
	}
	s := &Service{
		cfg: cfg, metrics: newMetrics(cfg.Registerer), refDone: make(chan struct{}),
		sem: make(chan struct{}, cfg.MaxConcurrent),
		log: cfg.Log.With().Str("component", "token-service").Str("instance", cfg.Instance).Logger(),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.src = token.NewSource(token.SourceConfig{
		Store: cfg.Store, Accounts: cfg.Accounts, Margin: cfg.Margin, LeaseTTL: cfg.LeaseTTL,
		LeaseWait: cfg.LeaseWait, HTTPClient: cfg.HTTPClient, Now: cfg.Clock.Now, Log: cfg.Log, Instance: cfg.Instance,
		OnRefresh: s.observe,
	})
	svc, err := micro.AddService(cfg.NC, micro.Config{
		Name: ServiceName, Version: ServiceVersion,
		Description: "Relay365 access tokens: get, forced refresh, status",
		Metadata:    map[string]string{"instance": cfg.Instance},
	})
	if err != nil {
		s.src.Close()
		return nil, fmt.Errorf("start token service %s: %w", ServiceName, err)
	}
	s.micro = svc
	g := svc.AddGroup("token")
	for name, h := range map[string]func(context.Context, micro.Request){"get": s.get, "refresh": s.refresh, "status": s.status, "smtp_refused": s.smtpRefused} {
		if err := g.AddEndpoint(name, s.dispatch(h)); err != nil {
			_ = svc.Stop()
			s.src.Close()
			return nil, fmt.Errorf("token service endpoint token.%s: %w", name, err)
		}
	}
	s.ref = &refresher{
		src: s.src, store: cfg.Store, accounts: cfg.Accounts, clock: cfg.Clock, margin: s.src.Margin(),
		metrics: s.metrics, log: s.log, stored: s.announceStored,
	}
	go func() {
		defer close(s.refDone)
		s.ref.run(s.ctx)
	}()
	s.log.Info().Dur("refresh_margin_ms", s.src.Margin()).Msg("token service started")
	return s, nil
}

// Source is the service's in-process token source.
func (s *Service) Source() *token.Source { return s.src }

// Instance is the name of this replica.
func (s *Service) Instance() string { return s.cfg.Instance }

// Stats are the micro endpoint statistics of this replica.
func (s *Service) Stats() micro.Stats { return s.micro.Stats() }

// Close stops taking requests, stops the refresher, and abandons refreshes
// in flight (their leases expire and another replica takes over, as after
// a crash). Safe to call twice.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.micro.Stop()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.src.Close()
		<-s.refDone
		s.inflight.Wait()
		s.log.Info().Msg("token service stopped")
	})
	return err
}

// dispatch runs h on its own goroutine (micro calls handlers one at a time
// per endpoint, and a refresh may take seconds), at most MaxConcurrent at
// once.
func (s *Service) dispatch(h func(context.Context, micro.Request)) micro.HandlerFunc {
	return func(req micro.Request) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			s.respondError(req, &ServiceError{Code: CodeUnavailable, Description: "token service stopping"})
			return
		}
		s.inflight.Add(1)
		s.mu.Unlock()
		select {
		case s.sem <- struct{}{}:
		case <-s.ctx.Done():
			s.inflight.Done()
			s.respondError(req, &ServiceError{Code: CodeUnavailable, Description: "token service stopping"})
			return
		}
		go func() {
			defer func() { <-s.sem; s.inflight.Done() }()
			// A refresh is bounded by the lease; a little more for the reply.
			ctx, cancel := context.WithTimeout(s.ctx, requestTimeout(s.cfg.LeaseTTL))
			defer cancel()
			h(ctx, asyncRequest{Request: req, nc: s.cfg.NC})
		}()
	}
}

// asyncRequest answers a micro request after micro's handler returned.
// micro reads the request's error field for its endpoint stats as soon as
// the handler returns, so answering later through the request itself
// races with that read. This answer goes straight on the connection, with
// the headers micro writes; the price is that micro's stats do not count
// these errors (relay_token_* metrics do).
type asyncRequest struct {
	micro.Request
	nc *nats.Conn
}

func (r asyncRequest) reply(msg *nats.Msg, opts []micro.RespondOpt) error {
	for _, opt := range opts {
		opt(msg)
	}
	msg.Subject = r.Reply()
	return r.nc.PublishMsg(msg)
}

func (r asyncRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.reply(&nats.Msg{Data: data}, opts)
}

func (r asyncRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

func (r asyncRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	msg := &nats.Msg{Data: data, Header: nats.Header{micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code}}}
	return r.reply(msg, opts)
}

func requestTimeout(leaseTTL time.Duration) time.Duration { return leaseTTL + 30*time.Second }

func (s *Service) parse(req micro.Request) (Request, error) {
	var r Request
	if err := json.Unmarshal(req.Data(), &r); err != nil {
		return r, fmt.Errorf("%w: body must be JSON like {\"account\":\"alerts\"}", errBadRequest)
	}
	if err := account.ValidateAlias(r.Account); err != nil {
		return r, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return r, nil
}

func (s *Service) get(ctx context.Context, req micro.Request) {
	r, err := s.parse(req)
	if err == nil {
		var tok token.AccessToken
		if tok, err = s.src.Token(ctx, r.Account); err == nil {
			s.respondToken(req, r.Account, tok)
			return
		}
	}
	s.respondError(req, err)
}

func (s *Service) refresh(ctx context.Context, req micro.Request) {
	r, err := s.parse(req)
	if err == nil {
		var tok token.AccessToken
		if tok, err = s.src.ForceRefreshSince(ctx, r.Account, r.Since); err == nil {
			s.respondToken(req, r.Account, tok)
			return
		}
	}
	s.respondError(req, err)
}

// smtpRefused records a worker's report that Office 365 refused a token
// fresh from a forced refresh (token.Source.MarkSMTPRefused): the record
// turns needs_consent, with the consent_required event and the state
// gauge, as a refresh the identity platform refused would.
func (s *Service) smtpRefused(ctx context.Context, req micro.Request) {
	r, err := s.parse(req)
	if err == nil && r.Since.IsZero() {
		err = fmt.Errorf("%w: token.smtp_refused needs \"since\", the refused token's issued time", errBadRequest)
	}
	if err == nil {
		var marked bool
		mark := s.src.MarkSMTPRefused
		if r.Accepted {
			mark = s.src.ClearSMTPRefused
		}
		if marked, err = mark(ctx, r.Account, r.Since); err == nil {
			if rerr := req.RespondJSON(SMTPRefusedReply{Account: r.Account, Marked: marked}); rerr != nil {
				s.log.Warn().Str("account", r.Account).Err(rerr).Msg("token.smtp_refused reply failed")
			}
			return
		}
	}
	s.respondError(req, err)
}

func (s *Service) status(ctx context.Context, req micro.Request) {
	var r StatusRequest
	if len(req.Data()) > 0 && json.Unmarshal(req.Data(), &r) != nil {
		s.respondError(req, fmt.Errorf("%w: body must be {} or {\"account\":\"alerts\"}", errBadRequest))
		return
	}
	var st []AccountStatus
	var err error
	if r.Account == "" {
		st, err = Collect(ctx, s.cfg.Accounts, s.cfg.Store, s.cfg.Clock.Now())
	} else {
		var a account.Account
		if a, err = s.cfg.Accounts.Get(ctx, r.Account); err == nil {
			var one AccountStatus
			one, err = Describe(ctx, s.cfg.Store, a, s.cfg.Clock.Now())
			st = []AccountStatus{one}
		}
	}
	if err != nil {
		s.respondError(req, err)
		return
	}
	if err := req.RespondJSON(StatusReply{Instance: s.cfg.Instance, Accounts: st}); err != nil {
		s.log.Warn().Err(err).Msg("token.status reply failed")
	}
}

func (s *Service) respondToken(req micro.Request, alias string, tok token.AccessToken) {
	err := req.RespondJSON(replyOf(alias, tok))
	if err != nil {
		s.log.Warn().Str("account", alias).Err(err).Msg("token reply failed")
	}
}

// respondError sends err as a micro error: code, description (the error
// text, which never holds secrets) and an ErrorBody.
func (s *Service) respondError(req micro.Request, err error) {
	code, body := errorReply(err)
	var se *ServiceError
	if errors.As(err, &se) {
		code = se.Code
	}
	data, _ := json.Marshal(body)
	// Header values cannot hold line breaks.
	desc := strings.NewReplacer("\r", " ", "\n", " ").Replace(err.Error())
	if rerr := req.Error(code, desc, data); rerr != nil {
		s.log.Warn().Err(rerr).Msg("token service error reply failed")
	}
}

// announceStored publishes token.stored (events.go).
func (s *Service) announceStored(rec token.Record) {
	if err := s.cfg.NC.Publish(SubjectStored, encodeEvent(storedEvent(rec, s.cfg.Instance, s.cfg.Clock.Now()))); err != nil {
		s.log.Warn().Str("account", rec.Account).Str("subject", SubjectStored).Err(err).Msg("event not published")
	}
}

// observe is the Source's OnRefresh: count, publish, and log state
// changes loudly.
func (s *Service) observe(o token.Outcome) {
	s.metrics.countRefresh(o)
	for _, p := range events(o, s.cfg.Instance, s.cfg.Clock.Now()) {
		if err := s.cfg.NC.Publish(p.subject, encodeEvent(p.event)); err != nil {
			s.log.Warn().Str("account", o.Account).Str("subject", p.subject).Err(err).Msg("event not published")
		}
	}
	if o.From == o.To {
		return
	}
	var ev *zerolog.Event
	switch {
	case o.To.Blocking():
		ev = s.log.Error()
	case o.To == token.StateTransient:
		ev = s.log.Warn()
	default:
		ev = s.log.Info()
	}
	ev = ev.Str("account", o.Account).Str("from", string(o.From)).Str("to", string(o.To))
	if o.Err != nil {
		ev = ev.Str("oauth_error", o.Err.Err).Ints("error_codes", o.Err.Codes).Str("remedy", o.Err.Remedy)
	}
	ev.Msg("token state changed")
}
