package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestDispatchExitCodes(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cmds := []Command{
		{Name: "ok", Run: func(context.Context, []string, Env) error { return nil }},
		{Name: "usage", Run: func(context.Context, []string, Env) error { return Usagef("--x: bad") }},
		{Name: "fail", Run: func(context.Context, []string, Env) error { return errors.New("boom") }},
		{Name: "help", Run: func(context.Context, []string, Env) error { return flag.ErrHelp }},
		{Name: "stop", Run: func(ctx context.Context, _ []string, _ Env) error { return fmt.Errorf("waiting: %w", ctx.Err()) }},
		{Name: "tempfail", Run: func(context.Context, []string, Env) error { return ExitError{Code: 75, Err: errors.New("NATS down")} }},
		{Name: "wrapped", Run: func(context.Context, []string, Env) error {
			return fmt.Errorf("queue: %w", ExitError{Code: 77, Err: errors.New("authorization violation")})
		}},
		{Name: "silent", Run: func(context.Context, []string, Env) error { return ExitError{Code: 3} }},
		{Name: "usage64", Run: func(context.Context, []string, Env) error { return ExitError{Code: 64, Err: Usagef("-x: unknown")} }},
		{Name: "stop75", Run: func(ctx context.Context, _ []string, _ Env) error { return ExitError{Code: 75, Err: ctx.Err()} }},
	}
	tests := []struct {
		ctx    context.Context
		args   []string
		code   int
		stderr string
	}{
		{context.Background(), []string{"ok"}, ExitOK, ""},
		{context.Background(), []string{"usage"}, ExitUsage, "prog usage: --x: bad"},
		{context.Background(), []string{"fail"}, ExitFail, "prog fail: boom"},
		{context.Background(), []string{"help"}, ExitOK, ""},
		{cancelled, []string{"stop"}, ExitInterrupted, "prog stop: interrupted: waiting: context canceled"},
		{context.Background(), []string{"nope"}, ExitUsage, `unknown command "nope"`},
		{context.Background(), nil, ExitUsage, ""},
		{context.Background(), []string{"--help"}, ExitOK, ""},
		// ExitError: the command's own code wins over every other rule.
		{context.Background(), []string{"tempfail"}, 75, "prog tempfail: NATS down"},
		{context.Background(), []string{"wrapped"}, 77, "prog wrapped: queue: authorization violation"},
		{context.Background(), []string{"silent"}, 3, ""},
		{context.Background(), []string{"usage64"}, 64, "prog usage64: -x: unknown"},
		{cancelled, []string{"stop75"}, 75, "prog stop75: context canceled"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := Dispatch(tt.ctx, "prog", cmds, func(w io.Writer) { io.WriteString(w, "USAGE") }, tt.args, Env{Stdout: &out, Stderr: &errb})
		if code != tt.code || !strings.Contains(errb.String(), tt.stderr) {
			t.Errorf("%v: exit %d stderr %q, want %d and %q", tt.args, code, errb.String(), tt.code, tt.stderr)
		}
		if tt.stderr == "" && len(tt.args) > 0 && tt.args[0] != "nope" && errb.Len() > 0 {
			t.Errorf("%v: stderr %q, want nothing", tt.args, errb.String())
		}
	}
}

func TestParseAndListFlag(t *testing.T) {
	fs := NewFlags("prog x", io.Discard)
	var l ListFlag
	fs.Var(&l, "to", "")
	if err := Parse(fs, []string{"--to", "a@x, b@x", "--to", "c@x"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l, []string{"a@x", "b@x", "c@x"}) {
		t.Fatalf("list %v", l)
	}
	if err := Parse(NewFlags("prog x", io.Discard), []string{"stray"}); !IsUsage(err) {
		t.Fatalf("stray argument: %v", err)
	}
	if err := Parse(NewFlags("prog x", io.Discard), []string{"--unknown"}); !IsUsage(err) {
		t.Fatalf("unknown flag: %v", err)
	}
	if got := EnvOr(Env{Getenv: func(string) string { return "" }}, "K", "def"); got != "def" {
		t.Fatalf("EnvOr = %q", got)
	}
}

// ByteSize reads bytes, KB and MB (1024-based) and prints back the
// largest unit that divides; anything else is an error naming the value.
func TestByteSize(t *testing.T) {
	for in, want := range map[string]int{"2048": 2048, "256KB": 256 << 10, "30MB": 30 << 20, " 35 MiB": 35 << 20, "7B": 7, "1KiB": 1024} {
		var b ByteSize
		if err := b.Set(in); err != nil || int(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for in, want := range map[int]string{35 << 20: "35MB", 4096: "4KB", 1000: "1000", 0: "0"} {
		b := ByteSize(in)
		if got := b.String(); got != want {
			t.Errorf("%d prints %q, want %q", in, got, want)
		}
	}
	for _, in := range []string{"ten", "-1", "5GB", "99999999MB"} {
		var b ByteSize
		if err := b.Set(in); err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("Set(%q): %v, want an error naming it", in, err)
		}
	}
}
