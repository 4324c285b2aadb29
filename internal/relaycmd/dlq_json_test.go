package relaycmd_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"relay365/internal/bench"
	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
)

// runChild runs the relay command line as a process of its own (the test
// binary, as TestMain lets it) with extra environment, and returns its
// exit code and output.
func runChild(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append([]string{bench.ChildEnv + "=1"}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return code, out.String(), errOut.String()
}

// relay dlq list --json and show --json print the same document for one
// dead letter, whatever the host's time zone: scripts compare and sort
// them. The list's dead_lettered was in the host's zone
// ("2026-12-08T02:35:06.1+05:30", from the consumer's delivery metadata)
// where show's, as every other time in the output, is UTC.
func TestDLQJSONSameInListAndShowInAnyZone(t *testing.T) {
	if _, err := time.LoadLocation("Asia/Kolkata"); err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	env, _ := deadLetters(t)
	tz := []string{"TZ=Asia/Kolkata"}
	code, list, errOut := runChild(t, tz, "dlq", "list", "--json", "--nats-url", env.URL)
	if code != 0 {
		t.Fatalf("list --json: exit %d\n%s%s", code, list, errOut)
	}
	code, show, errOut := runChild(t, tz, "dlq", "show", "1", "--json", "--nats-url", env.URL)
	if code != 0 {
		t.Fatalf("show --json: exit %d\n%s%s", code, show, errOut)
	}
	var fromList, fromShow map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(list, "\n", 2)[0]), &fromList); err != nil {
		t.Fatalf("list --json: %v\n%s", err, list)
	}
	if err := json.Unmarshal([]byte(show), &fromShow); err != nil {
		t.Fatalf("show --json: %v\n%s", err, show)
	}
	if !reflect.DeepEqual(fromList, fromShow) {
		t.Fatalf("dead letter 1 differs between list --json and show --json:\nlist: %v\nshow: %v", fromList, fromShow)
	}
	if s, _ := fromList["dead_lettered"].(string); !strings.HasSuffix(s, "Z") {
		t.Fatalf("dead_lettered %q, want UTC", s)
	}
}

// A script runs relay dlq purge --yes --account "$ACCOUNT" with ACCOUNT
// unset, or replay --all --reason "$REASON" with REASON empty: an empty
// --account meant every account, an empty --reason every reason, and the
// command purged (or replayed, sending mail again) the whole DLQ. A
// filter given empty is refused as a usage error, before connecting.
func TestDLQEmptyFilterRefused(t *testing.T) {
	env, ctx := deadLetters(t)
	for _, args := range [][]string{
		{"purge", "--yes", "--account", ""},
		{"purge", "--yes", "--account="},
		{"replay", "--all", "--reason", ""},
		{"replay", "--all", "--account", ""},
		{"list", "--account", ""},
	} {
		code, out, errOut := run(t, append(append([]string{"dlq"}, args...), "--nats-url", env.URL)...)
		if code != 2 || !strings.Contains(errOut, "is empty") {
			t.Errorf("relay dlq %q: exit %d, want 2 and the filter refused\n%s%s", args, code, out, errOut)
		}
	}
	if d, m := queuetest.Msgs(t, ctx, env.JS, queue.StreamDLQ), queuetest.Msgs(t, ctx, env.JS, queue.StreamMail); d != 3 || m != 0 {
		t.Fatalf("MAIL_DLQ holds %d, MAIL %d; want the 3 dead letters untouched", d, m)
	}
}
