// Package daemon is `relay serve` as an importable whole: it connects to
// (or embeds) NATS, opens the account registry and the sealed token store,
// runs the roles it is given and serves /metrics, /healthz, /readyz and
// /status. Tests start it in process, exactly as the binary does.
//
// /metrics holds, besides the engine's and the token service's series,
// relay_build_info and the queue gauges relay_queue_pending,
// relay_queue_ack_pending and relay_dlq_messages (metrics.go), which are
// read from JetStream on each scrape: every process reports the same
// values, and a scrape that cannot read them omits them and counts
// relay_queue_collect_errors_total instead of failing. /status is JSON,
// or an HTML page (html/template, escaped, no JavaScript) for clients
// that prefer text/html; neither holds a secret.
//
// Roles (--roles, default both): "tokens" runs a replica of the token
// service relay-tokens (internal/token/tokensvc: the micro endpoints and
// the proactive refresher; it needs the sealing key); "workers" runs the
// delivery engine (internal/relay), which gets tokens only through the
// token service's client, and a replica of relay-limits
// (internal/limits), which tells producers an account's size limit. Any number of processes may run either role against one NATS
// cluster; the token service's leases keep it to one refresh per account
// per expiry.
//
// Start-up order matters: streams and buckets exist before workers bind, and
// the HTTP server comes last so /readyz never reports ready for a half-built
// daemon. Shutdown is the reverse: stop fetching, let in-flight sends finish
// within the grace period, then close NATS and the embedded server (which
// flushes the store).
package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/cli"
	"relay365/internal/clock"
	"relay365/internal/connlimit"
	"relay365/internal/flight"
	"relay365/internal/ingress"
	"relay365/internal/limits"
	"relay365/internal/memlimit"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/roles"
	"relay365/internal/submit"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

// Roles a process can run (--roles).
const (
	RoleTokens  = "tokens"
	RoleWorkers = "workers"
)

// Defaults of relay serve, shared by its flags and Config.Defaults.
const (
	DefaultDataDir  = cli.DefaultDataDir
	DefaultHTTPAddr = "127.0.0.1:9465"
	DefaultRoles    = RoleTokens + "," + RoleWorkers

	// The HTTP server's bounds (Config.HTTPReadTimeout and the others).
	// A request is headers only (every route is a GET); /status takes up
	// to 5 s to gather; Prometheus scrapes keep their connection between
	// scrapes when the interval is under the idle timeout.
	DefaultHTTPReadTimeout  = 10 * time.Second
	DefaultHTTPWriteTimeout = 30 * time.Second
	DefaultHTTPIdleTimeout  = 60 * time.Second
	DefaultHTTPMaxConns     = 64
)

// Config is everything `relay serve` reads from flags and environment.
type Config struct {
	NATSURL    string               // RELAY_NATS_URL; empty: run an embedded server
	NATS       queue.ConnectOptions // authentication and TLS for NATSURL
	NATSListen string               // embedded server's client address; default 127.0.0.1:4222
	NATSSync   string               // embedded server's fsync policy: "always" (default) or a duration
	// NATSServerTLSCert and NATSServerTLSKey give the embedded server's
	// client listener TLS; required when it listens beyond loopback.
	NATSServerTLSCert, NATSServerTLSKey string
	DataDir                             string        // RELAY_DATA_DIR; default ./data
	KeyFile                             string        // RELAY_TOKEN_KEY_FILE; required for the tokens role
	Roles                               string        // --roles: "tokens", "workers" or both comma-separated; default both
	HTTPAddr                            string        // RELAY_HTTP_ADDR; default 127.0.0.1:9465; "off" disables
	Replicas                            int           // stream and bucket replicas; default 1
	AckWait                             time.Duration // default 60s
	MaxDeliver                          int           // default 50
	MaxAckPending                       int           // per account; default 1000
	QueueLifetime                       time.Duration // undelivered mail older than this is dead-lettered as expired; default queue.DefaultQueueLifetime
	RefreshMargin                       time.Duration // refresh access tokens this long before expiry; default 5m
	// BodyOrphanAge: a stored body no message names is deleted once this
	// old (--body-orphan-age; default body.OrphanAge, 24h); at least
	// MAIL's duplicate window, queue.DuplicatesFor(QueueLifetime).
	// BodySweepEvery: how often the sweeper looks (--body-sweep-every;
	// default relay.DefaultBodySweepEvery, 1h; at least 1s).
	BodyOrphanAge, BodySweepEvery time.Duration
	ShutdownGrace                 time.Duration // default 30s
	// MemoryLimit is the process's soft memory limit (--memory-limit;
	// default memlimit.Default). The command applies it before Start
	// (memlimit.Apply): it is process-wide, and Start also runs inside
	// tests, the sandbox and the bench, which must not get it.
	MemoryLimit  memlimit.Limit
	Retry, Pause relay.Backoff // default relay.DefaultRetry, relay.DefaultPause

	// SMTP is the submission front door (--smtp-listen, --smtps-listen);
	// off when neither address is set. Its TLS comes from SMTPTLSCert and
	// SMTPTLSKey, or, for loopback listeners without them, from a
	// certificate the daemon makes in <data-dir>/smtp-tls.
	SMTP                    ingress.Config
	SMTPTLSCert, SMTPTLSKey string

	// The HTTP server's bounds (/status, /metrics, /healthz, /readyz):
	// how long a request may take to arrive and its answer to leave, how
	// long a kept-alive connection may sit idle, and how many connections
	// may be open at once (one more is answered 503 and closed). Not
	// flags; defaults DefaultHTTPReadTimeout, DefaultHTTPWriteTimeout,
	// DefaultHTTPIdleTimeout and DefaultHTTPMaxConns.
	HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	HTTPMaxConns                                       int
	// Extra HTTP handlers (the sandbox adds /sandbox/messages).
	Extra map[string]http.Handler
	// Transport overrides the SMTP transport (tests set timeouts).
	Transport *submit.Transport
	// Clock drives token expiry and the refresh schedule (tests use a
	// fake); default real time.
	Clock clock.Clock
	// Instance names this process in token leases, events and status;
	// default <hostname>-<pid>.
	Instance string
}

// RoleList is the validated list of roles (after Defaults).
func (c *Config) RoleList() ([]string, error) {
	var out []string
	for _, r := range strings.Split(c.Roles, ",") {
		r = strings.TrimSpace(r)
		switch {
		case r != RoleTokens && r != RoleWorkers:
			return nil, fmt.Errorf("--roles %q: unknown role %q: want tokens, workers or tokens,workers", c.Roles, r)
		case slices.Contains(out, r):
			return nil, fmt.Errorf("--roles %q: %s given twice", c.Roles, r)
		}
		out = append(out, r)
	}
	return out, nil
}

// Has reports whether the process runs role.
func (c *Config) Has(role string) bool {
	roles, _ := c.RoleList()
	return slices.Contains(roles, role)
}

// Defaults fills zero values.
func (c *Config) Defaults() {
	if c.NATSListen == "" {
		c.NATSListen = queue.DefaultListen
	}
	if c.NATSSync == "" {
		c.NATSSync = queue.DefaultSync
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if strings.TrimSpace(c.Roles) == "" {
		c.Roles = DefaultRoles
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.HTTPReadTimeout == 0 {
		c.HTTPReadTimeout = DefaultHTTPReadTimeout
	}
	if c.HTTPWriteTimeout == 0 {
		c.HTTPWriteTimeout = DefaultHTTPWriteTimeout
	}
	if c.HTTPIdleTimeout == 0 {
		c.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if c.HTTPMaxConns == 0 {
		c.HTTPMaxConns = DefaultHTTPMaxConns
	}
	consumer := queue.ConsumerConfig{AckWait: c.AckWait, MaxDeliver: c.MaxDeliver, MaxAckPending: c.MaxAckPending}
	consumer.Defaults()
	c.AckWait, c.MaxDeliver, c.MaxAckPending = consumer.AckWait, consumer.MaxDeliver, consumer.MaxAckPending
	if c.Retry.Base == 0 {
		c.Retry = relay.DefaultRetry
	}
	if c.Pause.Base == 0 {
		c.Pause = relay.DefaultPause
	}
	if c.RefreshMargin == 0 {
		c.RefreshMargin = token.DefaultMargin
	}
	if c.QueueLifetime == 0 {
		c.QueueLifetime = queue.DefaultQueueLifetime
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = relay.DefaultShutdownGrace
	}
	if c.BodyOrphanAge == 0 {
		c.BodyOrphanAge = body.OrphanAge
	}
	if c.BodySweepEvery == 0 {
		c.BodySweepEvery = relay.DefaultBodySweepEvery
	}
	if c.MemoryLimit == 0 {
		c.MemoryLimit = memlimit.Default
	}
	if c.SMTP.MaxConns == 0 {
		c.SMTP.MaxConns = ingress.DefaultMaxConns
	}
	if c.SMTP.MaxConnsPerIP == 0 {
		c.SMTP.MaxConnsPerIP = ingress.DefaultMaxConnsPerIP
	}
}

// Validate says what to fix, one problem per error.
func (c *Config) Validate() error {
	var errs []error
	if _, err := c.RoleList(); err != nil {
		errs = append(errs, err)
	} else if c.KeyFile == "" && c.Has(RoleTokens) {
		errs = append(errs, errors.New("no token key: set RELAY_TOKEN_KEY_FILE or --key-file (create one with: relay keygen --out data/token.key); only processes with --roles workers can do without"))
	}
	if c.NATSURL != "" {
		if err := queue.CheckURL(c.NATSURL); err != nil {
			errs = append(errs, fmt.Errorf("--nats-url: %w", err))
		}
		// Options, not only Validate: it also reads the seed, password
		// and token files, which are as much configuration as the flags
		// (a bad seed is not a server that is not up yet).
		if _, err := c.NATS.Options(); err != nil {
			errs = append(errs, err)
		}
	} else if !c.NATS.IsZero() {
		errs = append(errs, errors.New("NATS authentication and TLS options apply to an external server: set --nats-url (RELAY_NATS_URL), or unset them for the embedded server"))
	}
	if c.NATSURL == "" {
		if _, _, err := queue.ParseSync(c.NATSSync); err != nil {
			errs = append(errs, err)
		}
		listen := c.NATSListen
		if host, port, err := net.SplitHostPort(listen); err == nil && port == "-1" {
			listen = net.JoinHostPort(host, "0") // nats-server's own "any port" (StartEmbedded)
		}
		if err := queue.CheckListen(listen); err != nil {
			errs = append(errs, fmt.Errorf("--nats-listen %q: %v", c.NATSListen, err))
		} else if !queue.IsLoopback(c.NATSListen) && c.NATSServerTLSCert == "" {
			errs = append(errs, fmt.Errorf("--nats-listen %s reaches other hosts: give the embedded server a certificate with --nats-server-tls-cert and --nats-server-tls-key (clients then use --nats-tls-ca)", c.NATSListen))
		}
		if (c.NATSServerTLSCert == "") != (c.NATSServerTLSKey == "") {
			errs = append(errs, errors.New("--nats-server-tls-cert and --nats-server-tls-key go together"))
		}
		if c.Replicas > 1 {
			// JetStream would refuse the streams once the server runs
			// ("replicas > 1 not supported in non-clustered mode").
			errs = append(errs, fmt.Errorf("--replicas %d: the embedded NATS server is a single node; replicas need a NATS cluster (--nats-url), else use 1", c.Replicas))
		}
	}
	if c.HTTPAddr != "off" {
		if err := queue.CheckListen(c.HTTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("--http-addr %q: %v, or off", c.HTTPAddr, err))
		}
	}
	if c.HTTPReadTimeout < 0 || c.HTTPWriteTimeout < 0 || c.HTTPIdleTimeout < 0 || c.HTTPMaxConns < 0 {
		errs = append(errs, errors.New("the HTTP server's timeouts and connection limit must be positive"))
	}
	if c.Replicas != 1 && c.Replicas != 3 && c.Replicas != 5 {
		errs = append(errs, fmt.Errorf("--replicas %d: want 1, 3 or 5", c.Replicas))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("--ack-wait %s: want at least 1s", c.AckWait))
	}
	if c.MaxDeliver < 2 {
		errs = append(errs, fmt.Errorf("--max-deliver %d: want at least 2 (it must be finite; the last delivery dead-letters)", c.MaxDeliver))
	}
	if c.MaxAckPending < 1 {
		errs = append(errs, fmt.Errorf("--max-ack-pending %d: want at least 1", c.MaxAckPending))
	}
	if err := c.Retry.Validate("--retry"); err != nil {
		errs = append(errs, err)
	}
	if err := c.Pause.Validate("--pause"); err != nil {
		errs = append(errs, err)
	}
	if c.QueueLifetime < queue.MinQueueLifetime {
		errs = append(errs, fmt.Errorf("--queue-lifetime %s: want at least %s", c.QueueLifetime, queue.MinQueueLifetime))
	}
	if dup := queue.DuplicatesFor(c.QueueLifetime); c.BodyOrphanAge < dup {
		// A producer may retry the publish naming a body it stored for as
		// long as JetStream recognises the retry (internal/body): a body
		// swept sooner could go before its message arrives.
		errs = append(errs, fmt.Errorf("--body-orphan-age %s: want at least MAIL's duplicate window, %s with --queue-lifetime %s (a producer may still publish the message naming a body that long after storing it)", c.BodyOrphanAge, dup, c.QueueLifetime))
	}
	if c.BodySweepEvery < time.Second {
		errs = append(errs, fmt.Errorf("--body-sweep-every %s: want at least 1s (each sweep reads MAIL and MAIL_DLQ whole)", c.BodySweepEvery))
	}
	if c.RefreshMargin < time.Minute || c.RefreshMargin > 30*time.Minute {
		errs = append(errs, fmt.Errorf("--refresh-margin %s: want 1m to 30m (access tokens live 60-90 minutes)", c.RefreshMargin))
	}
	if c.ShutdownGrace <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-grace %s: want a duration above 0 such as 30s", c.ShutdownGrace))
	}
	if err := c.MemoryLimit.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.SMTP.MaxConns < 1 || c.SMTP.MaxConnsPerIP < 1 {
		errs = append(errs, fmt.Errorf("--smtp-max-conns %d, --smtp-max-conns-per-ip %d: want at least 1 each", c.SMTP.MaxConns, c.SMTP.MaxConnsPerIP))
	}
	if (c.SMTPTLSCert == "") != (c.SMTPTLSKey == "") {
		errs = append(errs, errors.New("--smtp-tls-cert and --smtp-tls-key go together"))
	}
	if err := c.SMTP.Validate(c.SMTPTLSCert != ""); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Daemon is a running relay.
type Daemon struct {
	cfg      Config
	log      zerolog.Logger
	ns       *server.Server // nil when using an external NATS
	NC       *nats.Conn
	JS       jetstream.JetStream
	Accounts *account.Registry
	// Store is the sealed token store; nil in a workers-only process
	// started without a key file.
	Store *token.Store
	// TokenService is this process's token service replica (role tokens).
	TokenService *tokensvc.Service
	// TokenClient is the workers' client of the token service (role
	// workers; in every process, for /status without a key).
	TokenClient *tokensvc.Client
	// Engine is the delivery engine (role workers).
	Engine *relay.Engine
	// Limits answers producers' relay.v1.limits.<alias> (role workers).
	Limits   *limits.Service
	Registry *prometheus.Registry
	// HTTPAddr is the address the HTTP server listens on (resolved port).
	HTTPAddr string
	// NATSURL is the URL clients use to reach this daemon's NATS.
	NATSURL string
	// Ingress is the SMTP front door (nil when off); Producers its
	// identities.
	Ingress   *ingress.Server
	Producers *ingress.Producers
	// SMTPCAFile is the CA of the daemon's own loopback SMTP certificate
	// ("" when the operator gave one, or SMTP is off).
	SMTPCAFile string

	smtpTLS    *tls.Config // the operator's SMTP certificate, loaded by Start
	http       *http.Server
	started    atomic.Bool  // Start finished: /readyz and /status may look at everything
	phase      atomic.Value // string: what Start is doing, for /readyz meanwhile
	stopWorker context.CancelFunc
	workerDone chan error
	unlock     func() // releases <data-dir>/serve.lock (embedded server only)
	closeOnce  sync.Once
	// snapshots serves /status and /readyz: one Snapshot at a time for
	// however many ask, none older than its request (flight.Next).
	snapshots flight.Next[Status]
}

// Start brings the daemon up and returns once workers are running.
func Start(ctx context.Context, cfg Config, log zerolog.Logger) (_ *Daemon, err error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var keys *token.Keyring
	if cfg.KeyFile != "" {
		if keys, err = token.LoadKeyring(cfg.KeyFile); err != nil {
			// Missing, unreadable, open to others, not a key: the
			// operator's to fix, like a bad flag (exit 2).
			return nil, cli.UsageError{Err: err}
		}
	}
	// The certificates and the data directory are configuration too:
	// checked before anything listens (exit 2, as a bad flag).
	var natsCert tls.Certificate
	if cfg.NATSURL == "" && cfg.NATSServerTLSCert != "" {
		if natsCert, err = tls.LoadX509KeyPair(cfg.NATSServerTLSCert, cfg.NATSServerTLSKey); err != nil {
			return nil, cli.UsageError{Err: fmt.Errorf("--nats-server-tls-cert/--nats-server-tls-key: %w", err)}
		}
	}
	var smtpTLS *tls.Config
	if cfg.SMTP.Enabled() && cfg.SMTPTLSCert != "" {
		if smtpTLS, err = ingress.LoadTLS(cfg.SMTPTLSCert, cfg.SMTPTLSKey); err != nil {
			return nil, cli.UsageError{Err: err}
		}
	}
	storeDir := filepath.Join(cfg.DataDir, "jetstream")
	if cfg.NATSURL == "" {
		if err := os.MkdirAll(storeDir, 0o700); err != nil {
			return nil, cli.UsageError{Err: fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)}
		}
	}
	d := &Daemon{cfg: cfg, log: log, Registry: prometheus.NewRegistry(), smtpTLS: smtpTLS}
	d.snapshots.Run = func() (Status, error) {
		ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
		defer cancel()
		return d.Snapshot(ctx)
	}
	// On any failure below, undo what was started (the named result is
	// nil by then, so close the local).
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	d.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.NATSURL == "" {
		// One embedded server per store: a second relay serve on this
		// data directory stops here, before anything opens the store
		// (or takes a port the first one might be restarting on).
		var warn error
		if d.unlock, warn, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		if warn != nil {
			log.Warn().Err(warn).Msg("data directory not locked")
		}
	}
	// HTTP first: while NATS is not reachable yet, /healthz says the
	// process lives and /readyz says what it waits for.
	d.phase.Store("starting")
	if cfg.HTTPAddr != "off" {
		if err := d.serveHTTP(); err != nil {
			return nil, err
		}
	}

	d.NATSURL = cfg.NATSURL
	var inProcess []nats.Option
	if d.NATSURL == "" {
		// Closed to strangers: the roles' seeds in <data-dir>/nkeys for
		// clients on this host, and a user of this process's own.
		users, err := roles.EnsureSeeds(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		self, kp, err := roles.Internal()
		if err != nil {
			return nil, err
		}
		ec := queue.EmbeddedConfig{Listen: cfg.NATSListen, StoreDir: storeDir, Sync: cfg.NATSSync, Users: append(users, self)}
		if cfg.NATSServerTLSCert != "" {
			cert := natsCert
			ec.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			// The server asks the in-process pipe for TLS too: this
			// process trusts exactly its own certificate there.
			inProcess = append(inProcess, nats.Secure(pinned(cert)))
		}
		if d.ns, err = queue.StartEmbedded(ec); err != nil {
			return nil, err
		}
		inProcess = append(inProcess, nats.InProcessServer(d.ns), nats.Nkey(self.Nkey, kp.Sign))
		d.NATSURL = d.ns.ClientURL()
		log.Info().Str("url", d.NATSURL).Str("store", storeDir).Str("sync", cfg.NATSSync).Msg("embedded NATS JetStream started")
	}
	// With the embedded server the daemon talks to it over an in-memory
	// pipe, not TCP (no syscalls per message; producers and the nats CLI
	// still use the listener).
	if d.ns == nil && cfg.NATS.InboxPrefix == "" {
		// On an external server a process of one role replies on its
		// role's prefix, as deploy/nats/auth.conf expects.
		switch rs, _ := cfg.RoleList(); {
		case len(rs) == 1 && rs[0] == RoleWorkers:
			cfg.NATS.InboxPrefix = roles.Worker.InboxPrefix()
		case len(rs) == 1 && rs[0] == RoleTokens:
			cfg.NATS.InboxPrefix = roles.Tokens.InboxPrefix()
		}
	}
	d.phase.Store("connecting to NATS at " + queue.RedactURL(d.NATSURL))
	if d.NC, err = d.connect(ctx, cfg.NATS, append(inProcess, d.connectionLog()...)); err != nil {
		return nil, err
	}
	d.phase.Store("opening streams and buckets")
	js, err := jetstream.New(d.NC)
	if err != nil {
		return nil, err
	}
	// Every bucket opened below (accounts, tokens, pacing, sent) gets
	// the streams' replicas.
	d.JS = queue.WithReplicas(js, cfg.Replicas)
	// The mail streams are the workers' (a token service may not even
	// look at them under deploy/nats/auth.conf).
	if cfg.Has(RoleWorkers) {
		if err := queue.EnsureStreams(ctx, d.JS, queue.StreamConfig{Replicas: cfg.Replicas, Lifetime: cfg.QueueLifetime}); err != nil {
			return nil, err
		}
	}
	if d.Accounts, err = account.OpenRegistry(ctx, d.JS); err != nil {
		return nil, err
	}
	d.Registry.MustRegister(buildInfo())
	if cfg.Has(RoleWorkers) {
		d.Registry.MustRegister(newQueueCollector(d.JS, d.Accounts, log))
	}
	if keys != nil {
		if d.Store, err = token.OpenStore(ctx, d.JS, keys); err != nil {
			return nil, err
		}
	}
	if cfg.Has(RoleTokens) {
		d.TokenService, err = tokensvc.Start(tokensvc.Config{
			NC: d.NC, Store: d.Store, Accounts: d.Accounts, Margin: cfg.RefreshMargin,
			Clock: cfg.Clock, Instance: cfg.Instance, Registerer: d.Registry, Log: log,
		})
		if err != nil {
			return nil, err
		}
	}
	// Workers ask again at half the refresh margin: by then the
	// refresher has normally renewed the token and nobody waits.
	d.TokenClient = tokensvc.NewClient(tokensvc.ClientConfig{NC: d.NC, Margin: cfg.RefreshMargin / 2, Now: cfg.Clock.Now})

	if cfg.Has(RoleWorkers) {
		// Workers learn of tokens only from the token service: token.get
		// and token.refresh for access tokens, token.stored and
		// token.status for a paused account's re-consent.
		deps := relay.Deps{
			JS: d.JS, Accounts: d.Accounts, Tokens: d.TokenClient, TokenEvents: d.TokenClient,
			Transport: cfg.Transport, Registry: d.Registry, Log: log,
		}
		d.Engine = relay.NewEngine(deps, relay.Config{
			AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver, MaxAckPending: cfg.MaxAckPending,
			Retry: cfg.Retry, Pause: cfg.Pause, ShutdownGrace: cfg.ShutdownGrace, QueueLifetime: cfg.QueueLifetime,
			BodyOrphanAge: cfg.BodyOrphanAge, BodySweepEvery: cfg.BodySweepEvery,
		})
		// Producers learn an account's size limit from the workers, who
		// hold every message to it anyway (internal/limits).
		if d.Limits, err = limits.Start(d.NC, d.Accounts, cfg.Instance, log); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		d.stopWorker = cancel
		d.workerDone = make(chan error, 1)
		go func() { d.workerDone <- d.Engine.Run(wctx) }()
		select {
		case <-d.Engine.Ready():
		case err := <-d.workerDone:
			d.workerDone <- err // for Close
			return nil, fmt.Errorf("delivery engine: %w", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	if cfg.SMTP.Enabled() {
		if err := d.startIngress(ctx); err != nil {
			return nil, err
		}
	}

	d.started.Store(true)
	log.Info().Str("nats", queue.RedactURL(d.NATSURL)).Str("http", d.HTTPAddr).Str("roles", cfg.Roles).Msg("relay serving")
	return d, nil
}

// The start-up retry schedule, written down: a NATS server that is not up
// yet (a cluster starting beside the relay, a container started first) is
// tried again after 1s, 2s, 4s … at most 30s, jittered ±20%, until it
// answers or ctx ends; every failure is logged. A refused login is not
// retried: it will not heal by waiting.
const (
	connectBase = time.Second
	connectMax  = 30 * time.Second
)

// connect dials NATS, waiting for it with the schedule above.
func (d *Daemon) connect(ctx context.Context, o queue.ConnectOptions, extra []nats.Option) (*nats.Conn, error) {
	retry := relay.Backoff{Base: connectBase, Max: connectMax, Jitter: 0.2}
	for attempt := 1; ; attempt++ {
		nc, err := queue.ConnectWith(d.NATSURL, "relay365-serve", o, extra...)
		if err == nil {
			if attempt > 1 {
				d.log.Info().Str("url", queue.RedactURL(d.NATSURL)).Int("attempt", attempt).Msg("NATS reachable: starting")
			}
			return nc, nil
		}
		if errors.Is(err, nats.ErrAuthorization) || d.ns != nil {
			return nil, err
		}
		wait := retry.Delay(attempt)
		d.log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in_ms", wait).Msg("NATS not reachable yet; /readyz stays false until it is")
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up waiting for NATS: %v)", err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// connectionLog logs every loss and return of the NATS connection, so an
// operator sees a flapping server in the relay's log.
func (d *Daemon) connectionLog() []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				d.log.Warn().Err(err).Msg("NATS connection lost; reconnecting (sends wait, nothing is lost)")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			d.log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
		}),
	}
}

// startIngress opens the SMTP front door: its certificate, the producer
// registry, the listeners.
func (d *Daemon) startIngress(ctx context.Context) error {
	sc := d.cfg.SMTP
	var err error
	if d.smtpTLS != nil {
		sc.TLS = d.smtpTLS
	} else {
		sc.TLS, d.SMTPCAFile, err = ingress.LoopbackTLS(filepath.Join(d.cfg.DataDir, "smtp-tls"))
	}
	if err != nil {
		return err
	}
	if d.Producers, err = ingress.OpenProducers(ctx, d.JS); err != nil {
		return err
	}
	d.Ingress, err = ingress.Start(ctx, sc, ingress.Deps{
		JS: d.JS, Accounts: d.Accounts, Producers: d.Producers, Registry: d.Registry, Log: d.log, Clock: d.cfg.Clock,
	})
	if err != nil {
		return err
	}
	if d.SMTPCAFile != "" {
		d.log.Info().Str("ca_file", d.SMTPCAFile).Msg("SMTP submission uses the relay's own loopback certificate; local clients trust this CA file")
	}
	return nil
}

func (d *Daemon) serveHTTP() error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{Registry: d.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", d.readyz)
	mux.HandleFunc("GET /status", d.status)
	for pattern, h := range d.cfg.Extra {
		mux.Handle(pattern, h)
	}
	ln, err := net.Listen("tcp", d.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w", d.cfg.HTTPAddr, err)
	}
	d.HTTPAddr = ln.Addr().String()
	d.http = newHTTPServer(d.cfg, mux)
	go d.http.Serve(connlimit.New(ln, connlimit.Config{Max: d.cfg.HTTPMaxConns, Refuse: refuseHTTP}))
	return nil
}

// Close stops the daemon: delivery first (no more pulls; in-flight sends
// get the grace period to finish and be acked), then the token service
// (refreshes in flight are abandoned; their leases expire and another
// replica takes over), HTTP, NATS and the
// embedded server. Safe to call twice.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() {
		if d.Ingress != nil {
			// No more 250s: a message in DATA now is not acknowledged,
			// so its client sends it again.
			err = d.Ingress.Close()
		}
		if d.Limits != nil {
			err = errors.Join(err, d.Limits.Close())
		}
		if d.stopWorker != nil {
			d.stopWorker()
			err = errors.Join(err, <-d.workerDone)
		}
		if d.TokenService != nil {
			err = errors.Join(err, d.TokenService.Close())
		}
		if d.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			d.http.Shutdown(ctx)
			cancel()
		}
		if d.NC != nil {
			// Everything that subscribed has stopped: send what is
			// buffered (events, acks), then close. (Drain is
			// asynchronous; a Close right after it cut it short.)
			d.NC.FlushTimeout(2 * time.Second)
			d.NC.Close()
		}
		if d.ns != nil {
			// With many accounts this is most of the stop: nats-server
			// (v2.15.1 and later) stops a stream's consumers one after
			// another and sleeps at least 10 ms in each one's
			// consumerFileStore.Stop (waitOnFlusher), so 2,000 lanes'
			// consumers take 20 s or more (BENCHMARKS.md). Logged so an
			// operator sees where a slow stop went.
			consumers := 0
			if jsz, jerr := d.ns.Jsz(nil); jerr == nil {
				consumers = jsz.Consumers
			}
			began := time.Now()
			d.ns.Shutdown()
			d.ns.WaitForShutdown()
			d.log.Info().Int("consumers", consumers).Dur("took_ms", time.Since(began)).Msg("embedded NATS server stopped")
		}
		if d.unlock != nil {
			d.unlock() // the store is closed: another relay serve may open it
		}
	})
	return err
}

// pinned is a client TLS configuration that accepts one certificate, the
// process's own, whatever its chain: for the daemon's in-memory pipe to
// its own embedded server.
func pinned(own tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the exact comparison below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], own.Certificate[0]) {
				return errors.New("embedded NATS server: not this process's certificate")
			}
			return nil
		},
	}
}

// ClientOptions are what a client of role r on this host uses to reach
// the daemon's embedded server: the role's seed in the data directory and
// its reply prefix (roles.Default). With an external server they are
// empty but for the prefix.
func (d *Daemon) ClientOptions(r roles.Role) queue.ConnectOptions {
	var o queue.ConnectOptions
	if d.ns != nil {
		roles.Default(&o, d.cfg.DataDir, r)
	}
	return o
}

// Run is `relay serve`: start, wait for ctx, stop.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	d, err := Start(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			// Interrupted while starting (waiting for NATS, say): a
			// clean stop, and the log's last line says so.
			log.Info().Msg("relay serve stopped: asked to stop before it was ready")
			return nil
		}
		return err
	}
	<-ctx.Done()
	log.Info().Msg("shutting down: finishing sends in flight (a second Ctrl-C or SIGTERM quits at once; what is cut short is sent again after a restart)")
	if err := d.Close(); err != nil {
		return err // the caller logs why
	}
	log.Info().Msg("relay serve stopped: asked to stop")
	return nil
}

// Setup makes (or brings up to date) every stream and bucket the relay
// uses, as `relay setup` does with the admin's credentials before workers
// and token services start under users that may not create them
// (deploy/nats/auth.conf). A relay on its embedded server does it itself.
// lifetime is the queue lifetime the relays run with (0: the default).
func Setup(ctx context.Context, js jetstream.JetStream, replicas int, lifetime time.Duration) error {
	js = queue.WithReplicas(js, replicas)
	if err := queue.EnsureStreams(ctx, js, queue.StreamConfig{Replicas: replicas, Lifetime: lifetime}); err != nil {
		return err
	}
	if _, err := account.OpenRegistry(ctx, js); err != nil {
		return err
	}
	if err := token.EnsureBucket(ctx, js); err != nil {
		return err
	}
	if _, err := relay.OpenSentMarkers(ctx, js); err != nil {
		return err
	}
	if _, err := pacing.Open(ctx, js, nil); err != nil {
		return err
	}
	_, err := ingress.OpenProducers(ctx, js)
	return err
}
