package relaycmd

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/rs/zerolog"

	"relay365/internal/body"
	"relay365/internal/cli"
	"relay365/internal/daemon"
	"relay365/internal/ingress"
	"relay365/internal/logging"
	"relay365/internal/memlimit"
	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/sandbox"
	"relay365/internal/token"
)

// logFlags are shared by every long-running command.
type logFlags struct{ format, level string }

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "auto", "log format: auto (console on a terminal, else JSON), json, console")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn, error")
}

// parse parses args (the log flags registered with the command's own) and
// builds the logger.
func (l *logFlags) parse(fs *flag.FlagSet, args []string, env Env) (zerolog.Logger, error) {
	if err := parse(fs, args); err != nil {
		return zerolog.Nop(), err
	}
	log, err := logging.New(env.Stderr, l.format, l.level)
	if err != nil {
		return log, cli.UsageError{Err: err}
	}
	return log, nil
}

// daemonFlags binds the daemon's config fields to flags, defaults from the
// environment (docs/design.md §4).
func daemonFlags(fs *flag.FlagSet, env Env, c *daemon.Config) {
	fs.StringVar(&c.NATSURL, "nats-url", "", "NATS server URL; empty runs an embedded JetStream server (env RELAY_NATS_URL)")
	c.NATS.Register(fs, env.Getenv)
	fs.StringVar(&c.NATSListen, "nats-listen", queue.DefaultListen, "client address of the embedded NATS server")
	fs.StringVar(&c.NATSServerTLSCert, "nats-server-tls-cert", "", "PEM certificate of the embedded server's client listener; required when --nats-listen is not loopback (env RELAY_NATS_SERVER_TLS_CERT)")
	fs.StringVar(&c.NATSServerTLSKey, "nats-server-tls-key", "", "PEM private key of --nats-server-tls-cert (env RELAY_NATS_SERVER_TLS_KEY)")
	fs.StringVar(&c.NATSSync, "nats-sync", queue.DefaultSync, "embedded server fsync: always (accepted mail survives power loss) or an interval like 1s")
	fs.StringVar(&c.DataDir, "data-dir", daemon.DefaultDataDir, "data directory for the embedded JetStream store (env RELAY_DATA_DIR)")
	fs.StringVar(&c.KeyFile, "key-file", env.Getenv("RELAY_TOKEN_KEY_FILE"), "token sealing key file (env RELAY_KEY_FILE, or RELAY_TOKEN_KEY_FILE as authtool reads it); create with relay keygen; needed by the tokens role")
	fs.StringVar(&c.Roles, "roles", daemon.DefaultRoles, "what this process runs: tokens (token service replica and proactive refresh), workers (deliveries), or both")
	fs.StringVar(&c.HTTPAddr, "http-addr", daemon.DefaultHTTPAddr, "metrics, health and status address, or off (env RELAY_HTTP_ADDR)")
	fs.IntVar(&c.Replicas, "replicas", 1, "replicas of streams and buckets (3 or 5 in a cluster)")
	fs.DurationVar(&c.AckWait, "ack-wait", queue.DefaultAckWait, "time a worker holds a message before JetStream redelivers it (heartbeats extend it)")
	fs.IntVar(&c.MaxDeliver, "max-deliver", queue.DefaultMaxDeliver, "deliveries before a message that keeps failing is dead-lettered")
	fs.DurationVar(&c.QueueLifetime, "queue-lifetime", queue.DefaultQueueLifetime, "undelivered mail older than this is moved to MAIL_DLQ as expired, at least 10s (env RELAY_QUEUE_LIFETIME); relay setup must use the same value")
	fs.IntVar(&c.MaxAckPending, "max-ack-pending", queue.DefaultMaxAckPending, "messages per account handed out and not yet acked (waiting retries count)")
	c.Retry, c.Pause = relay.DefaultRetry, relay.DefaultPause
	fs.DurationVar(&c.Retry.Base, "retry-base", relay.DefaultRetry.Base, "first wait before retrying a temporary failure (doubles each time, ±20% jitter)")
	fs.DurationVar(&c.Retry.Max, "retry-max", relay.DefaultRetry.Max, "longest wait between retries")
	fs.DurationVar(&c.Pause.Base, "pause-base", relay.DefaultPause.Base, "first wait before probing a paused account (doubles each time, ±20% jitter)")
	fs.DurationVar(&c.Pause.Max, "pause-max", relay.DefaultPause.Max, "longest wait between probes of a paused account")
	fs.DurationVar(&c.RefreshMargin, "refresh-margin", token.DefaultMargin, "refresh access tokens this long before they expire")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", relay.DefaultShutdownGrace, "time in-flight sends get to finish on shutdown")
	fs.DurationVar(&c.BodyOrphanAge, "body-orphan-age", body.OrphanAge, "a large message's stored body that no queued or dead-lettered message names is deleted once this old (left by a crash between storing and publishing, or between sending and deleting); at least MAIL's duplicate window (24h, or --queue-lifetime x1.4 and at least 1m more when that is shorter), since a producer may publish the message naming a body that long after storing it")
	fs.DurationVar(&c.BodySweepEvery, "body-sweep-every", relay.DefaultBodySweepEvery, "how often orphaned bodies are looked for (each look reads MAIL and MAIL_DLQ), at least 1s")
	memoryLimitFlag(fs, &c.MemoryLimit)
	fs.StringVar(&c.SMTP.Listen, "smtp-listen", "", "SMTP submission with STARTTLS, e.g. 127.0.0.1:2525 or :587; off when empty (env RELAY_SMTP_LISTEN)")
	fs.StringVar(&c.SMTP.ListenTLS, "smtps-listen", "", "SMTP submission over implicit TLS, e.g. :465; off when empty (env RELAY_SMTPS_LISTEN)")
	fs.StringVar(&c.SMTPTLSCert, "smtp-tls-cert", "", "PEM certificate chain of the SMTP listeners; required unless they listen on loopback (env RELAY_SMTP_TLS_CERT)")
	fs.StringVar(&c.SMTPTLSKey, "smtp-tls-key", "", "PEM private key of --smtp-tls-cert (env RELAY_SMTP_TLS_KEY)")
	fs.StringVar(&c.SMTP.Hostname, "smtp-hostname", "", "name in the SMTP greeting and Received fields; default the host name (env RELAY_SMTP_HOSTNAME)")
	fs.IntVar(&c.SMTP.MaxConns, "smtp-max-conns", ingress.DefaultMaxConns, "SMTP connections open at once (both listeners together)")
	fs.IntVar(&c.SMTP.MaxConnsPerIP, "smtp-max-conns-per-ip", ingress.DefaultMaxConnsPerIP, "SMTP connections open at once from one client address (an IPv6 client: its /64)")
}

// memoryLimitFlag registers --memory-limit (every long-running command).
func memoryLimitFlag(fs *flag.FlagSet, l *memlimit.Limit) {
	*l = memlimit.Default
	fs.Var(l, "memory-limit", "soft memory limit of this process: a `SIZE` as in GOMEMLIMIT (64MiB, 1GiB) or off; GOMEMLIMIT wins when set")
}

// applyMemoryLimit sets the process's soft memory limit (memlimit.Apply)
// once the command's configuration is valid, and says which is in effect.
// A limit from the flag is a floor that follows the live heap until ctx
// ends (memlimit.Follow); GOMEMLIMIT is left as the operator set it.
func applyMemoryLimit(ctx context.Context, l memlimit.Limit, log zerolog.Logger) {
	eff, from := memlimit.Apply(l)
	log.Info().Str("memory_limit", eff.String()).Str("from", from).Msg("soft memory limit")
	if from != memlimit.EnvVar && eff != memlimit.Off {
		go memlimit.Follow(ctx, eff, memlimit.FollowEvery)
	}
}

func runServe(ctx context.Context, args []string, env Env) error {
	fs := newFlags("serve", env)
	var cfg daemon.Config
	var lf logFlags
	daemonFlags(fs, env, &cfg)
	lf.register(fs)
	if err := flagsFromEnv(fs, env, args); err != nil {
		return err
	}
	log, err := lf.parse(fs, args, env)
	if err != nil {
		return err
	}
	// Every field came from a flag, so Validate sees what the user typed
	// (Defaults would turn --workers 0 into 3).
	if err := cfg.Validate(); err != nil {
		return cli.UsageError{Err: err}
	}
	applyMemoryLimit(ctx, cfg.MemoryLimit, log)
	if err := daemon.Run(ctx, cfg, log); err != nil {
		// The last line of the log says why the relay stopped, in the
		// log's own format (JSON by default), not only on stderr.
		log.Error().Err(err).Msg("relay serve stopped")
		return err
	}
	return nil
}

func runSandbox(ctx context.Context, args []string, env Env) error {
	fs := newFlags("sandbox", env)
	var cfg sandbox.Config
	var lf logFlags
	fs.StringVar(&cfg.DataDir, "data-dir", sandbox.DefaultDataDir, "data directory (JetStream store, key, captured mail)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", queue.DefaultListen, "client address of the embedded NATS server")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", daemon.DefaultHTTPAddr, "metrics, health, status and /sandbox/messages address")
	fs.StringVar(&cfg.SMTPListen, "smtp-listen", sandbox.DefaultSMTPListen, "SMTP submission with STARTTLS, or off")
	fs.StringVar(&cfg.SMTPSListen, "smtps-listen", sandbox.DefaultSMTPSListen, "SMTP submission over implicit TLS, or off")
	memoryLimitFlag(fs, &cfg.Daemon.MemoryLimit)
	lf.register(fs)
	log, err := lf.parse(fs, args, env)
	if err != nil {
		return err
	}
	// sandbox.Config's empty fields are its defaults (tests leave them
	// out); on the command line an empty value is a mistake, which would
	// otherwise start the sandbox where the user did not ask.
	want := map[string]string{"data-dir": "a directory", "nats-listen": "host:port", "http-addr": "host:port",
		"smtp-listen": "host:port, or off", "smtps-listen": "host:port, or off"}
	var empty []error
	fs.Visit(func(f *flag.Flag) {
		if w, ok := want[f.Name]; ok && f.Value.String() == "" {
			empty = append(empty, fmt.Errorf("--%s is empty: give %s", f.Name, w))
		}
	})
	if err := errors.Join(empty...); err != nil {
		return cli.UsageError{Err: err}
	}
	if err := cfg.Daemon.MemoryLimit.Validate(); err != nil {
		return cli.UsageError{Err: err}
	}
	applyMemoryLimit(ctx, cfg.Daemon.MemoryLimit, log)
	cfg.Out = env.Stdout
	return sandbox.Run(ctx, cfg, log)
}
