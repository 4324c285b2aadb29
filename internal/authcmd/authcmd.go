// Package authcmd is the `authtool` command line: it connects Office 365
// mailboxes to Relay365 and administers the stored accounts.
//
// A person signs in once (login: browser with PKCE, or the device code
// flow on a headless server; app: client credentials; import: a refresh
// token from another tool), a test mail goes through Office 365 SMTP with
// the new token, and only when it is accepted are the account and its
// sealed tokens written to the KV buckets through RELAY_NATS_URL, where a
// running relay picks them up without a restart. The consent work itself
// lives in internal/consent; this package turns flags into one config per
// command, validated before anything starts, and reports.
//
// Prompts, progress and the countdown go to stderr, results to stdout
// (--json for scripts). Secrets (tokens, client secrets, the sealing key)
// are never printed: client secrets come from a file or an environment
// variable, never from a flag value, so they stay out of shell history and
// process lists.
//
// Failure semantics: a failure before the test mail is accepted stores
// nothing and prints its cause and remedy; an interruption (Ctrl-C) does
// the same. Exit codes are those of internal/cli: 0 ok, 1 failed, 2 bad
// usage or configuration, 130 interrupted.
package authcmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"relay365/internal/buildinfo"
	"relay365/internal/cli"
	"relay365/internal/queue"
)

// Env is the process environment plus the seams a test needs.
type Env struct {
	cli.Env
	// OpenBrowser opens a URL in the person's browser; nil: the system's
	// opener (xdg-open, open or rundll32).
	OpenBrowser func(url string) error
	// DevicePoll replaces the polling interval the device flow's server
	// asks for. Tests only; 0 in real use.
	DevicePoll time.Duration
}

// Main runs authtool with the process's environment.
func Main(args []string) int {
	ctx, stop := cli.SignalContext()
	defer stop()
	return Run(ctx, args, Env{Env: cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}})
}

// Run runs one authtool command and returns its exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	if env.Stdin == nil {
		env.Stdin = eofReader{}
	}
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintf(env.Stdout, "authtool %s\n", buildinfo.Read())
		return cli.ExitOK
	}
	// The countdown writes from its own goroutine: serialise stderr.
	env.Stderr = &syncWriter{w: env.Stderr}
	return cli.Dispatch(ctx, "authtool", commands(env), usage, args, env.Env)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func commands(env Env) []cli.Command {
	bind := func(run func(context.Context, []string, Env) error) func(context.Context, []string, cli.Env) error {
		return func(ctx context.Context, args []string, _ cli.Env) error { return run(ctx, args, env) }
	}
	return []cli.Command{
		{Name: "login", Summary: "sign a mailbox in (browser with PKCE, or --flow device), send a test mail, store the account", Run: bind(runLogin)},
		{Name: "app", Summary: "add an app-only account (client credentials), send a test mail, store it", Run: bind(runApp)},
		{Name: "import", Summary: "bring a refresh token from another tool: redeem it once, send a test mail, store it", Run: bind(runImport)},
		{Name: "list", Summary: "accounts, token state and expiry, last error (no secrets)", Run: bind(runList)},
		{Name: "test", Summary: "send a test mail through a stored account", Run: bind(runTest)},
		{Name: "remove", Summary: "delete an account and its sealed tokens", Run: bind(runRemove)},
		{Name: "rotate-key", Summary: "re-seal every stored token under a new key", Run: bind(runRotateKey)},
	}
}

const usageHead = `authtool: connect Office 365 mailboxes to Relay365 with OAuth2

Usage: authtool <command> [flags]   (authtool <command> -h for its flags; authtool --version)

A person signs in once, a test mail proves the token works, and only then
are the account and its sealed tokens stored (in NATS, where relay serve
picks them up without a restart).

Commands:
`

const usageTail = `
Examples:
  authtool login --account alerts --mailbox alerts@contoso.com \
    --tenant contoso.onmicrosoft.com --client-id <application id>
  authtool login --flow device ...          # headless server: sign in on another device
  authtool app --account billing --mailbox billing@contoso.com --tenant <tenant id> \
    --client-id <application id> --client-secret-file /run/secrets/relay-app
  authtool list --json

Environment:
  RELAY_NATS_URL        NATS of the relay (default ` + queue.DefaultURL + `, where relay serve listens)
  RELAY_TOKEN_KEY_FILE  the relay's token sealing key file (relay keygen creates one)
  HTTPS_PROXY, NO_PROXY proxy for the identity platform (--proxy overrides)

Output: prompts, progress and the countdown on stderr; results on stdout
(--json: one JSON document). No command prints tokens, secrets or keys.

Exit codes:
  0    success
  1    failed (sign-in refused, test mail refused, NATS unreachable, ...): the
       cause and what to do are printed; login, app and import stored nothing
  2    bad usage or configuration: the message says what to fix; nothing was started
  130  interrupted (Ctrl-C): nothing was stored
`

func usage(w io.Writer) {
	fmt.Fprint(w, usageHead)
	for _, c := range commands(Env{}) {
		fmt.Fprintf(w, "  %-11s %s\n", c.Name, c.Summary)
	}
	fmt.Fprint(w, usageTail)
}
