// Package cli holds what Relay365's command lines share: the process
// environment as a value (so tests run a whole command in process), the
// exit codes, flag parsing that reports instead of exiting, and the
// dispatch from a command name to its function.
//
// Exit codes are the same for every binary: 0 success, 1 failure while
// running (the message says what failed and what to do), 2 bad usage or
// configuration (the message says what to fix; nothing was started), 130
// interrupted (Ctrl-C or SIGTERM while the command was running). A command
// whose callers expect other codes returns an ExitError instead (relay
// sendmail speaks sysexits.h, as /usr/sbin/sendmail does).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFail        = 1
	ExitUsage       = 2
	ExitInterrupted = 130
)

// DefaultDataDir is the relay's data directory unless --data-dir or
// RELAY_DATA_DIR says otherwise: the embedded store, the nkey seeds the
// commands on the same host use, the SMTP front door's own certificate.
const DefaultDataDir = "data"

// Env is the process environment and standard streams.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// UsageError marks errors that are the caller's to fix (exit 2): a bad
// flag, a missing file, an invalid configuration. It is the one usage
// error of every Relay365 command line.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// IsUsage reports whether err or an error it wraps is a usage error.
func IsUsage(err error) bool {
	return errors.As(err, new(UsageError))
}

// Usagef builds a UsageError.
func Usagef(format string, args ...any) error { return UsageError{Err: fmt.Errorf(format, args...)} }

// ExitError makes Dispatch exit with Code instead of the codes above, for a
// command whose callers expect codes of their own (relay sendmail: the
// sysexits.h codes cron and mail tools act on). Err, when not nil, is
// printed as any other error is; Code wins over every other rule, even an
// interruption, because the command chose it.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e ExitError) Unwrap() error { return e.Err }

// Command is one subcommand.
type Command struct {
	Name, Summary string
	Run           func(ctx context.Context, args []string, env Env) error
}

// Dispatch runs the command named by args[0] and turns its error into an
// exit code, printing it as "<prog> <command>: <error>". No command, -h,
// --help or help print usage. An error after ctx ended is an interruption.
// An ExitError sets the code itself.
func Dispatch(ctx context.Context, prog string, cmds []Command, usage func(io.Writer), args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	for _, c := range cmds {
		if c.Name != args[0] {
			continue
		}
		err := c.Run(ctx, args[1:], env)
		var exit ExitError
		switch {
		case err == nil:
			return ExitOK
		case errors.As(err, &exit):
			if exit.Err != nil {
				fmt.Fprintf(env.Stderr, "%s %s: %v\n", prog, c.Name, err)
			}
			return exit.Code
		case errors.Is(err, flag.ErrHelp):
			return ExitOK
		case IsUsage(err):
			fmt.Fprintf(env.Stderr, "%s %s: %v\n", prog, c.Name, err)
			return ExitUsage
		case ctx.Err() != nil && errors.Is(err, context.Canceled):
			fmt.Fprintf(env.Stderr, "%s %s: interrupted: %v\n", prog, c.Name, err)
			return ExitInterrupted
		default:
			fmt.Fprintf(env.Stderr, "%s %s: %v\n", prog, c.Name, err)
			return ExitFail
		}
	}
	fmt.Fprintf(env.Stderr, "%s: unknown command %q\n\n", prog, args[0])
	usage(env.Stderr)
	return ExitUsage
}

// NewFlags returns a flag set named name that reports errors to w instead
// of exiting.
func NewFlags(name string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	return fs
}

// Parse parses args and turns a flag error into a UsageError; stray
// positional arguments are refused rather than ignored.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// EnvOr returns the environment variable key, or def when it is unset.
func EnvOr(env Env, key, def string) string {
	if env.Getenv != nil {
		if v := env.Getenv(key); v != "" {
			return v
		}
	}
	return def
}

// CheckTimeout refuses a --timeout that has run out before the command
// starts: the first call would fail with "context deadline exceeded",
// exit 1, as if the server did not answer (relay health would call a
// healthy relay unhealthy).
func CheckTimeout(d time.Duration) error {
	if d <= 0 {
		return Usagef("--timeout %s: want a duration above 0 such as 10s", d)
	}
	return nil
}

// ListFlag is a repeatable string flag that also splits on commas.
type ListFlag []string

func (l *ListFlag) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated values of v.
func (l *ListFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// ByteSize is a size flag: "2048", "256KB", "30MB" (KB and MB are 1024
// and 1024², as the relay's limits are: 35 MB is 35 << 20). It prints
// back in the largest unit that divides it.
type ByteSize int

func (b *ByteSize) String() string {
	switch n := int(*b); {
	case n > 0 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MB"
	case n > 0 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KB"
	default:
		return strconv.Itoa(n)
	}
}

// Set reads a size: digits, then KB, KiB, MB, MiB or B.
func (b *ByteSize) Set(s string) error {
	mult := 1
	num := strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KB", 1 << 10}, {"KiB", 1 << 10}, {"MB", 1 << 20}, {"MiB", 1 << 20}, {"B", 1}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > math.MaxInt32/mult {
		return fmt.Errorf("%q is not a size (2048, 256KB, 30MB)", s)
	}
	*b = ByteSize(n * mult)
	return nil
}
