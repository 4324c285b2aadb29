// Package relaycmd is the `relay` command line: flags and environment into
// one config struct per subcommand, validated before anything starts, then
// one call into the package that does the work. main stays a single line.
//
// Exit codes: 0 success, 1 failure while running (NATS unreachable, a
// message refused), 2 bad usage or configuration (the message says what to
// fix), 130 interrupted (internal/cli; relay serve and relay sandbox, which
// run until a signal, exit 0 for it). relay publish exits 75 (sysexits.h's
// EX_TEMPFAIL) where trying again later may pass, so scripts can tell it
// from 1. relay sendmail alone exits with sysexits.h's codes throughout,
// which its callers expect of /usr/sbin/sendmail.
package relaycmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/bench"
	"relay365/internal/cli"
	"relay365/internal/daemon"
	"relay365/internal/queue"
	"relay365/internal/roles"
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
	ctx, stop := cli.SignalContext()
	defer stop()
	return Run(ctx, commandLine(os.Args[0], args), Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}

// commandLine is args, behind "sendmail" when the binary runs under that
// name: installed as a symlink /usr/sbin/sendmail -> relay, it is called
// as sendmail is (sendmail -t -i), as Postfix's and msmtp's are.
func commandLine(argv0 string, args []string) []string {
	if filepath.Base(argv0) == "sendmail" {
		return append([]string{"sendmail"}, args...)
	}
	return args
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
		{"sendmail", "queue a message from stdin, as /usr/sbin/sendmail does", runSendmail},
		{"setup", "create the streams and buckets (as the NATS admin, before restricted relays start)", runSetup},
		{"keygen", "create the token sealing key file", runKeygen},
		{"health", "ask a running relay serve whether it is healthy (a container's HEALTHCHECK)", runHealth},
		{"version", "print the version, commit and build date (also --version)", runVersion},
		{"bench", "measure relay serve against the SMTP ceiling, with --ingress the SMTP front door, with --accounts N many mailboxes (each part in its own process)", runBench},
	}
}

const usageHead = `relay: Office 365 mail relay over NATS JetStream with OAuth2 (XOAUTH2)

Usage: relay <command> [flags]   (relay <command> -h for its flags)

Commands:
`

const usageTail = `
Environment: RELAY_NATS_URL, RELAY_DATA_DIR, RELAY_TOKEN_KEY_FILE, RELAY_HTTP_ADDR;
relay serve: every flag also as RELAY_<FLAG> (--smtp-listen: RELAY_SMTP_LISTEN; relay serve -h);
NATS authentication: ` + queue.ConnectEnv + `.
Exit codes: 0 ok, 1 failed while running, 2 bad usage or configuration, 130 interrupted
(relay serve and sandbox: 0, a clean stop; a second Ctrl-C quits at once); relay publish: 75
where trying again later may pass (NATS unreachable, the queue full); relay sendmail: sysexits.h.
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
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) > 0 && args[0] == bench.ChildCommand {
		// relay bench's children (the sink, the ceiling client): hidden
		// from the usage, as nobody but the bench starts them.
		return cli.Dispatch(ctx, "relay", []cli.Command{{Name: bench.ChildCommand, Run: runBenchChild}}, usage, args, env)
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

// natsClient is what every command that reaches the relay's NATS as a
// client takes: the server's URL, the credentials, and the relay's data
// directory, whose nkeys/ seed of the command's role stands in when no
// credentials are named (a command on the relay's own host needs none).
type natsClient struct {
	URL     string
	Opts    queue.ConnectOptions
	DataDir string
}

// register binds --nats-url, the credential flags and --data-dir.
func (n *natsClient) register(fs *flag.FlagSet, env Env) {
	fs.StringVar(&n.URL, "nats-url", envOr(env, "RELAY_NATS_URL", queue.DefaultURL), "NATS server URL (env RELAY_NATS_URL)")
	n.Opts.Register(fs, env.Getenv)
	fs.StringVar(&n.DataDir, "data-dir", envOr(env, "RELAY_DATA_DIR", daemon.DefaultDataDir), "the relay's data directory: its nkeys/ seeds are used when no NATS credentials are given (env RELAY_DATA_DIR)")
}

// as readies the options for role (roles.Default): its seed in the data
// directory when no credentials are named, and its reply prefix.
func (n *natsClient) as(role roles.Role) { roles.Default(&n.Opts, n.DataDir, role) }

// connect connects a short-lived command as role (roles.Connect).
func (n natsClient) connect(name string, role roles.Role, extra ...nats.Option) (*nats.Conn, error) {
	return roles.Connect(n.URL, name, n.Opts, n.DataDir, role, extra...)
}

// jetStream connects as role and opens JetStream on the connection, which
// the caller closes.
func (n natsClient) jetStream(name string, role roles.Role, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := n.connect(name, role, extra...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// endOnRefusal returns ctx ended, with the refusal as its cause
// (context.Cause), at the first permissions violation NATS reports on the
// connection the returned option is given to. NATS answers a request the
// user may not make (a publish to the JetStream API, a subscription to
// the reply inbox) with nothing but an asynchronous -ERR, so without this
// a command run with another role's credentials waits out its whole
// --timeout and reports only "context deadline exceeded".
func endOnRefusal(ctx context.Context) (context.Context, context.CancelFunc, nats.Option) {
	ctx, refuse := context.WithCancelCause(ctx)
	return ctx, func() { refuse(nil) }, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			refuse(err)
		}
	})
}

// refusal is err with the permissions violation that ended ctx
// (endOnRefusal) and what to do about it named, or err as it is when
// nothing was refused.
func refusal(ctx context.Context, err error, role roles.Role) error {
	cause := context.Cause(ctx)
	if err == nil || !errors.Is(cause, nats.ErrPermissionViolation) {
		return err
	}
	return fmt.Errorf("%w; NATS refused this user: %v (this command needs %s, with the rights deploy/nats/auth.conf gives it: the relay's seed nkeys/%s.nk in --data-dir, or --nats-user %[3]s with its password)",
		err, cause, role.User(), string(role))
}

// subcommand splits "CMD SUB ARGS..." for a command made of subcommands
// (dlq, producer): with no SUB it prints usage and fails, naming the
// choices; with a help flag it prints usage, and ok is false with no error.
func subcommand(args []string, cmd, choices, usage string, env Env) (sub string, rest []string, ok bool, err error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(env.Stdout, usage)
		if len(args) == 0 {
			return "", nil, false, cli.Usagef("a %s command is required: %s", cmd, choices)
		}
		return "", nil, false, nil
	}
	return args[0], args[1:], true, nil
}
