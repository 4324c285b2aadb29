package relaycmd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/cli"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/internal/roles"
)

const producerUsage = `Usage: relay producer <command> [flags]

Producers are the identities that submit mail over SMTP (relay serve
--smtp-listen): a name, a password (stored only as an argon2id hash) and the
accounts it may send through.

  add NAME --accounts A,B [--password-file F]   create or replace; prints a generated
                                                password when no file is given; sessions
                                                logged in before must log in again
  list [--json]                                 names and accounts, never passwords
  remove NAME                                   its next AUTH fails, and so does the next
                                                MAIL or DATA of a session logged in before
`

type producerConfig struct {
	NATS         natsClient
	Accounts     listFlag
	PasswordFile string
	JSON         bool
	Timeout      time.Duration
}

func runProducer(ctx context.Context, args []string, env Env) error {
	sub, args, ok, err := subcommand(args, "producer", "add, list or remove", producerUsage, env)
	if !ok {
		return err
	}
	var c producerConfig
	fs := newFlags("producer "+sub, env)
	c.NATS.register(fs, env)
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "give up after this long")
	want := 1
	switch sub {
	case "add":
		fs.Var(&c.Accounts, "accounts", "accounts the producer may send through (comma-separated or repeated)")
		fs.StringVar(&c.PasswordFile, "password-file", "", "read the password from this file (- for stdin); without it one is generated and printed once")
	case "list":
		fs.BoolVar(&c.JSON, "json", false, "print JSON")
		want = 0
	case "remove":
	default:
		fmt.Fprint(env.Stderr, producerUsage)
		return cli.Usagef("unknown producer command %q", sub)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != want {
		return cli.Usagef("producer %s takes %d argument(s), got %d", sub, want, len(pos))
	}
	if err := cli.CheckTimeout(c.Timeout); err != nil {
		return err
	}
	password := ""
	if sub == "add" {
		if !ingress.ValidName(pos[0]) {
			return cli.Usagef("producer name %q: use lower-case letters, digits, '-' and '_'", pos[0])
		}
		if len(c.Accounts) == 0 {
			return cli.Usagef("--accounts is required: the accounts this producer may send through")
		}
		for _, a := range c.Accounts {
			// Here, not only in Put: that runs after the connection, so a
			// typo came back as exit 1, or as a NATS to look for.
			if !message.ValidAccount(a) {
				return cli.Usagef("--accounts: %q is not an account alias (lower-case letters, digits, '-' and '_')", a)
			}
		}
		if password, err = readPassword(c.PasswordFile, env.Stdin); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	ctx, stop, onRefusal := endOnRefusal(ctx)
	defer stop()
	nc, js, err := c.NATS.jetStream("relay-producer", roles.Admin, onRefusal)
	if err != nil {
		return err
	}
	defer nc.Close()
	return refusal(ctx, producerCommand(ctx, js, sub, c, pos, password, env), roles.Admin)
}

// producerCommand runs relay producer SUB on the admin's connection.
func producerCommand(ctx context.Context, js jetstream.JetStream, sub string, c producerConfig, pos []string, password string, env Env) error {
	prods, err := ingress.OpenProducers(ctx, js)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		generated := password == ""
		if generated {
			password = ingress.NewPassword()
		}
		p, err := prods.Put(ctx, pos[0], c.Accounts, password)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "producer %s may send through %s\n", p.Name, strings.Join(p.Accounts, ", "))
		if generated {
			fmt.Fprintf(env.Stdout, "password: %s\n", password)
			fmt.Fprintln(env.Stderr, "The password is shown once and stored only as a hash: keep it in the producer's secret store.")
		}
		return nil
	case "list":
		list, err := prods.List(ctx)
		if err != nil {
			return err
		}
		if c.JSON {
			type row struct {
				Name     string    `json:"name"`
				Accounts []string  `json:"accounts"`
				Created  time.Time `json:"created"`
			}
			enc := json.NewEncoder(env.Stdout)
			for _, p := range list {
				if err := enc.Encode(row{p.Name, p.Accounts, p.Created}); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tACCOUNTS\tCREATED")
		for _, p := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, strings.Join(p.Accounts, ","), p.Created.Format(time.RFC3339))
		}
		return tw.Flush()
	default: // remove
		if err := prods.Remove(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "producer %s removed\n", pos[0])
		return nil
	}
}

// readPassword reads a password file (- for stdin), without its final
// line break; "" when no file is named.
func readPassword(file string, stdin io.Reader) (string, error) {
	if file == "" {
		return "", nil
	}
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, 4096))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", cli.UsageError{Err: fmt.Errorf("--password-file: %w", err)}
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if len(pw) < 12 {
		return "", cli.Usagef("--password-file: the password is shorter than 12 characters")
	}
	return pw, nil
}
