// Package relaycmd is the `relay` command line: flags and environment into
// one config struct per subcommand, validated before anything starts, then
// one call into the package that does the work. main stays a single line.
//
// Exit codes: 0 success, 1 failure while running (NATS unreachable, a
// message refused), 2 bad usage or configuration (the message says what to
// fix), 130 interrupted (internal/cli).
package relaycmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"

	"relay365/internal/cli"
	"relay365/internal/queue"
)

// Exit codes (shared with authtool, see internal/cli).
const (
	ExitOK    = cli.ExitOK
	ExitFail  = cli.ExitFail
	ExitUsage = cli.ExitUsage
)

// Env is the process environment and standard streams, so tests run the
// command line in process.
type Env = cli.Env

// Main runs the relay command with the process's environment.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, env Env) error
}

func commands() []command {
	return []command{
		{"serve", "run the relay: workers, token refresh, metrics", runServe},
		{"sandbox", "run everything locally against a fake Office 365", runSandbox},
		{"publish", "queue one message for delivery", runPublish},
		{"dlq", "list, show, replay or purge dead letters", runDLQ},
		{"producer", "add, list or remove SMTP producer identities", runProducer},
		{"keygen", "create the token sealing key file", runKeygen},
		{"bench", "measure the relay against the SMTP ceiling, or with --ingress the SMTP front door (in one process)", runBench},
	}
}

const usageHead = `relay: Office 365 mail relay over NATS JetStream with OAuth2 (XOAUTH2)

Usage: relay <command> [flags]   (relay <command> -h for its flags)

Commands:
`

const usageTail = `
Environment: RELAY_NATS_URL, RELAY_DATA_DIR, RELAY_TOKEN_KEY_FILE, RELAY_HTTP_ADDR;
NATS authentication: ` + queue.ConnectEnv + `.
Exit codes: 0 ok, 1 failed while running, 2 bad usage or configuration, 130 interrupted.
`

func usage(w io.Writer) {
	fmt.Fprint(w, usageHead)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, usageTail)
}

// Run runs one relay command and returns its exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	var cmds []cli.Command
	for _, c := range commands() {
		cmds = append(cmds, cli.Command{Name: c.name, Summary: c.summary, Run: c.run})
	}
	return cli.Dispatch(ctx, "relay", cmds, usage, args, env)
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, env Env) *flag.FlagSet { return cli.NewFlags("relay "+name, env.Stderr) }

// parse parses args; flag errors and stray arguments are usage errors.
func parse(fs *flag.FlagSet, args []string) error { return cli.Parse(fs, args) }

// envOr returns the environment variable, or def when unset.
func envOr(env Env, key, def string) string { return cli.EnvOr(env, key, def) }

// listFlag is a repeatable string flag that also splits on commas.
type listFlag = cli.ListFlag

// connectNATS connects a short-lived command to the relay's NATS.
func connectNATS(url, name string, o queue.ConnectOptions) (*nats.Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, cli.UsageError{Err: err}
	}
	nc, err := queue.ConnectWith(url, name, o)
	if err != nil {
		return nil, fmt.Errorf("%w (is relay serve or relay sandbox running? set --nats-url or RELAY_NATS_URL)", err)
	}
	return nc, nil
}
