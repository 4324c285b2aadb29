package relaycmd

import (
	"context"
	"flag"
	"relay365/internal/queue"
	"strings"
	"time"

	"relay365/internal/bench"
	"relay365/internal/cli"
)

func runBench(ctx context.Context, args []string, env Env) error {
	fs := newFlags("bench", env)
	var c bench.Config
	var conns, syncs string
	var ingressMode bool
	fs.IntVar(&c.Accounts, "accounts", 0, "many mailboxes instead (issue 18): enroll `N` accounts at Office 365's limits, restart relay serve, time until every lane is bound, measure it idle, then load every mailbox at 30 a minute (N/2 msg/s); one --sync setting (default always)")
	fs.DurationVar(&c.AccountsSettle, "accounts-settle", bench.DefaultAccountsSettle, "with --accounts: wait after every lane is bound before the idle period (idle pulls lengthen)")
	fs.DurationVar(&c.AccountsIdle, "accounts-idle", 30*time.Second, "with --accounts: idle period whose CPU is measured")
	fs.DurationVar(&c.AccountsDuration, "accounts-duration", 5*time.Minute, "with --accounts: length of the load at 30 messages a minute per mailbox")
	fs.BoolVar(&ingressMode, "ingress", false, "measure the SMTP front door end to end instead: submissions over --conns connections (default 16, --sync default always) to the sink's 250")
	fs.IntVar(&c.Messages, "messages", 20000, "messages per ceiling and relay run (with --ingress: per load run)")
	fs.StringVar(&conns, "conns", "1,4,16", "connection counts, comma-separated (with --ingress: submission connections, default 16)")
	c.Size = 2048
	fs.Var((*cli.ByteSize)(&c.Size), "size", "message size (rendered): bytes, or with KB or MB (1024-based: 30MB, 256KB); above 256KB through the body store")
	fs.IntVar(&c.Batch, "publish-batch", queue.BatchSize, "relay run: messages per atomic batch the publisher hands over (1: each on its own, asynchronously)")
	fs.IntVar(&c.Rate, "rate", 200, "offered rate of the latency run, messages/s")
	fs.IntVar(&c.Latency, "latency-messages", 0, "messages in each latency run (default 5 s at --rate, at most --messages)")
	fs.StringVar(&syncs, "sync", "always,2m", "embedded JetStream fsync settings to run, comma-separated (\"always\" or a duration)")
	fs.BoolVar(&c.JSON, "json", false, "one JSON object per line")
	memoryLimitFlag(fs, &c.MemoryLimit)
	fs.Lookup("memory-limit").Usage = "relay serve's soft memory limit (its --memory-limit): a `SIZE` as in GOMEMLIMIT (64MiB, 1GiB) or off; GOMEMLIMIT wins when set"
	if err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	if ingressMode && !set["conns"] {
		conns = "16"
	}
	if (ingressMode || c.Accounts > 0) && !set["sync"] {
		syncs = "always"
	}
	if c.Conns, err = bench.ParseConns(conns); err != nil {
		return cli.UsageError{Err: err}
	}
	for _, s := range strings.Split(syncs, ",") {
		c.Sync = append(c.Sync, strings.TrimSpace(s))
	}
	c.Ingress = ingressMode
	if err := c.Validate(); err != nil {
		return cli.UsageError{Err: err}
	}
	if c.Accounts > 0 {
		_, err = bench.RunAccounts(ctx, c, env.Stdout)
		return err
	}
	if ingressMode {
		_, err = bench.RunIngress(ctx, c, env.Stdout)
		return err
	}
	_, err = bench.Run(ctx, c, env.Stdout)
	return err
}

// runBenchChild is `relay bench-child sink|ceiling`, a child of relay
// bench (internal/bench/child.go).
func runBenchChild(ctx context.Context, args []string, env Env) error {
	return bench.RunChild(ctx, args, env.Stdin, env.Stdout)
}
