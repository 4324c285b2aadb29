package relaycmd

import (
	"flag"
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
// that is set becomes the flag's value unless the command line sets the
// flag too (call it before parsing). A value the flag refuses stops the
// command with a message naming the variable.
func flagsFromEnv(fs *flag.FlagSet, env Env) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if !strings.Contains(f.Usage, name) {
			f.Usage += " (env " + name + ")"
		}
		v := env.Getenv(name)
		if v == "" || err != nil {
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
