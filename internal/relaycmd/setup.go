package relaycmd

import (
	"context"
	"fmt"
	"time"

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
		client   natsClient
		replicas int
		lifetime time.Duration
		timeout  time.Duration
	)
	client.register(fs, env)
	fs.IntVar(&replicas, "replicas", 1, "replicas of streams and buckets (3 or 5 in a cluster)")
	fs.DurationVar(&lifetime, "queue-lifetime", queue.DefaultQueueLifetime, "the queue lifetime relay serve runs with (MAIL keeps mail a margin longer); the same value on both")
	fs.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if replicas != 1 && replicas != 3 && replicas != 5 {
		return cli.Usagef("--replicas %d: want 1, 3 or 5", replicas)
	}
	if lifetime < queue.MinQueueLifetime {
		return cli.Usagef("--queue-lifetime %s: want at least %s", lifetime, queue.MinQueueLifetime)
	}
	if err := cli.CheckTimeout(timeout); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx, stop, onRefusal := endOnRefusal(ctx)
	defer stop()
	nc, js, err := client.jetStream("relay-setup", roles.Admin, onRefusal)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := daemon.Setup(ctx, js, replicas, lifetime); err != nil {
		return refusal(ctx, err, roles.Admin)
	}
	fmt.Fprintf(env.Stdout, "streams MAIL and MAIL_DLQ and the relay's KV buckets are in place (%d replicas)\n", replicas)
	return nil
}
