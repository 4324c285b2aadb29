package relaycmd

import (
	"context"
	"fmt"
	"path/filepath"

	"relay365/internal/daemon"
	"relay365/internal/token"
)

func runKeygen(ctx context.Context, args []string, env Env) error {
	fs := newFlags("keygen", env)
	out := fs.String("out", envOr(env, "RELAY_TOKEN_KEY_FILE", filepath.Join(daemon.DefaultDataDir, "token.key")), "where to write the key (mode 0600; never overwritten)")
	if err := parse(fs, args); err != nil {
		return err
	}
	id, err := token.GenerateKeyFile(*out)
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(*out)
	fmt.Fprintf(env.Stdout, "wrote key %s to %s\nexport RELAY_TOKEN_KEY_FILE=%s\n", id, *out, abs)
	fmt.Fprintln(env.Stderr, "Back this file up somewhere safe: without it the stored tokens cannot be opened and every account must consent again.")
	return nil
}
