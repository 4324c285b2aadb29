package relaycmd

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/cli"
	"relay365/internal/daemon"
	"relay365/internal/queue"
	"relay365/internal/roles"
)

// runSetup is `relay setup`: as the admin, make every stream and bucket,
// so workers and token services can start under NATS users that may not
// create them (deploy/nats/auth.conf). Run it again after an upgrade or to
// change --replicas; it changes only what differs.
func runSetup(ctx context.Context, args []string, env Env) error {
	fs := newFlags("setup", env)
	var (
		url      string
		o        queue.ConnectOptions
		dataDir  string
		replicas int
		lifetime time.Duration
		timeout  time.Duration
	)
	fs.StringVar(&url, "nats-url", envOr(env, "RELAY_NATS_URL", queue.DefaultURL), "NATS server URL (env RELAY_NATS_URL)")
	o.Register(fs, env.Getenv)
	dataDirFlag(fs, env, &dataDir)
	fs.IntVar(&replicas, "replicas", 1, "replicas of streams and buckets (3 or 5 in a cluster)")
	fs.DurationVar(&lifetime, "queue-lifetime", queue.DefaultQueueLifetime, "the queue lifetime relay serve runs with (MAIL keeps mail a margin longer); the same value on both")
	fs.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if replicas != 1 && replicas != 3 && replicas != 5 {
		return cli.Usagef("--replicas %d: want 1, 3 or 5", replicas)
	}
	roles.Default(&o, dataDir, roles.Admin)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, err := connectNATS(url, "relay-setup", o)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if lifetime < queue.MinQueueLifetime {
		return cli.Usagef("--queue-lifetime %s: want at least %s", lifetime, queue.MinQueueLifetime)
	}
	if err := daemon.Setup(ctx, js, replicas, lifetime); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "streams MAIL and MAIL_DLQ and the relay's KV buckets are in place (%d replicas)\n", replicas)
	return nil
}
