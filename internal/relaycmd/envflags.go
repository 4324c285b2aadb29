package relaycmd

import (
	"flag"
	"io"
	"strings"

	"relay365/internal/cli"
)

// envName is the environment variable of a flag: RELAY_ and the flag's
// name upper-cased with - as _ (--smtp-max-conns: RELAY_SMTP_MAX_CONNS).
func envName(flagName string) string {
	return "RELAY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagsFromEnv gives every flag of fs its environment variable, so a
// container or a systemd unit configures `relay serve` without editing
// its command line: each flag's help names its variable, and a variable
// that is set becomes the flag's value unless args, the command line,
// set the flag too (call it before parsing args). A value the flag
// refuses stops the command with a message naming the variable; one the
// command line overrides is not read at all, so an operator can mend a
// bad variable with a flag.
func flagsFromEnv(fs *flag.FlagSet, env Env, args []string) error {
	onCommandLine := flagsIn(fs, args)
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if !strings.Contains(f.Usage, name) {
			f.Usage += " (env " + name + ")"
		}
		v := env.Getenv(name)
		if v == "" || err != nil || onCommandLine[f.Name] {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			// As the flag package says it for the flag: the value and
			// what the flag takes, not only "parse error".
			kind, _ := flag.UnquoteUsage(f)
			if kind != "" {
				kind = " (" + kind + ")"
			}
			err = cli.Usagef("environment variable %s: invalid value %q for --%s%s: %v", name, v, f.Name, kind, e)
		}
	})
	return err
}

// flagsIn names the flags of fs that args set, read as fs would read
// them but into values that keep nothing; a malformed command line is
// left for the real parse to refuse.
func flagsIn(fs *flag.FlagSet, args []string) map[string]bool {
	scratch := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	scratch.SetOutput(io.Discard)
	scratch.Usage = func() {}
	fs.VisitAll(func(f *flag.Flag) {
		b, isBool := f.Value.(interface{ IsBoolFlag() bool })
		scratch.Var(ignored{isBool: isBool && b.IsBoolFlag()}, f.Name, "")
	})
	_ = scratch.Parse(args)
	set := map[string]bool{}
	scratch.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// ignored is a flag value that takes anything and keeps nothing.
type ignored struct{ isBool bool }

func (ignored) String() string     { return "" }
func (ignored) Set(string) error   { return nil }
func (i ignored) IsBoolFlag() bool { return i.isBool }
