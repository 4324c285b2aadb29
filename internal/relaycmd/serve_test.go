package relaycmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestServeRefusesBadRoles(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--roles", "tokens,mailer", "--key-file", "k"},
		{"serve", "--roles", "tokens"}, // the tokens role needs the key
	} {
		var stderr bytes.Buffer
		code := Run(context.Background(), args, Env{Stdout: &bytes.Buffer{}, Stderr: &stderr})
		if code != ExitUsage || !strings.Contains(stderr.String(), "roles") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
	}
}
