package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRunAccountsSmoke runs the many-mailboxes mode small and short: 20
// mailboxes, relay serve restarted on its data directory, every figure
// there and sane, no child left. Each mailbox gets 3 messages in 6 s, far
// under its 30 a minute, and the sink has Office 365's limits on: a single
// 432 or 554 5.2.0 would be the relay breaking its pacing or connection
// limit, so the count must be 0 every time.
func TestRunAccountsSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	var pids []int
	cfg := Config{Accounts: 20, AccountsSettle: time.Second, AccountsIdle: 2 * time.Second, AccountsDuration: 6 * time.Second,
		// The load's deadline: under the test's, so a run that cannot
		// finish says why while the sink still answers.
		Timeout: time.Minute,
		JSON:    true, Dir: t.TempDir(), OnChild: func(pid int) { pids = append(pids, pid) }}
	r, err := RunAccounts(ctx, cfg, &out)
	if err != nil {
		t.Fatalf("RunAccounts: %v\noutput:\n%s", err, out.String())
	}
	t.Log(strings.TrimSpace(out.String()))
	// The sink, relay serve, and relay serve again after the restart.
	if len(pids) != 3 || pids[1] == pids[2] {
		t.Errorf("children %v, want 3 (sink, relay serve, relay serve restarted)", pids)
	}
	checkGone(t, pids)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line, got:\n%s", out.String())
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	for _, f := range []string{"mode", "sync", "accounts", "stop_s", "bind_s", "idle_cpu_pct", "idle_rss_mb", "load_s", "messages",
		"offered_msgs_per_s", "published_msgs_per_s", "late_publishes", "accepted_msgs_per_s", "p50_ms", "p99_ms",
		"pacing_violations", "other_refusals", "load_cpu_pct", "peak_rss_mb"} {
		if _, ok := m[f]; !ok {
			t.Errorf("no %q: %s", f, lines[0])
		}
	}
	// 20 mailboxes at 30 a minute: 10 msg/s, one every 100 ms, 60 in 6 s.
	switch {
	case r.Mode != "accounts" || r.Sync != "always" || r.Accounts != 20 || r.Messages != 60 || r.NotPublished != 0 || r.OfferedMsgsPerS != 10:
		t.Errorf("mode %s sync %s accounts %d messages %d not published %d offered %v, want accounts always 20 60 0 10: %s",
			r.Mode, r.Sync, r.Accounts, r.Messages, r.NotPublished, r.OfferedMsgsPerS, lines[0])
	case r.StopS <= 0 || r.BindS <= 0:
		t.Errorf("stop or bind time not positive: %s", lines[0])
	case r.IdleCPUPct < 0 || r.IdleRSSMB <= 0 || r.LoadCPUPct <= 0 || r.PeakRSSMB < r.IdleRSSMB:
		t.Errorf("cpu or rss figures: %s", lines[0])
	case r.PublishedMsgsPerS <= 0 || r.AcceptedMsgsPerS <= 0:
		t.Errorf("rates not positive: %s", lines[0])
	case r.P50Ms <= 0 || r.P50Ms > r.P99Ms:
		t.Errorf("percentiles: %s", lines[0])
	case r.PacingViolations != 0 || r.OtherRefusals != 0:
		t.Errorf("the sink refused %d for pacing, %d otherwise; want none: %s", r.PacingViolations, r.OtherRefusals, lines[0])
	}
}

// TestClassifyRefusals: 432 and 554 5.2.0 are pacing violations, every
// other refusal is counted apart.
func TestClassifyRefusals(t *testing.T) {
	tests := []struct {
		replies       map[string]int
		pacing, other int
	}{
		{nil, 0, 0},
		{map[string]int{"432 4.3.2": 2, "554 5.2.0": 3}, 5, 0},
		{map[string]int{"451 4.7.0": 1, "535 5.7.3": 4, "554 5.2.0": 1}, 1, 5},
	}
	for _, tc := range tests {
		if p, o := classifyRefusals(tc.replies); p != tc.pacing || o != tc.other {
			t.Errorf("%v: pacing %d other %d, want %d %d", tc.replies, p, o, tc.pacing, tc.other)
		}
	}
}

// TestParseGauge reads an unlabelled series from the text format.
func TestParseGauge(t *testing.T) {
	text := "# HELP relay_lanes_bound x\n# TYPE relay_lanes_bound gauge\nrelay_lanes_bound_total 7\nrelay_lanes_bound 2000\n"
	if n, err := parseGauge(strings.NewReader(text), "relay_lanes_bound"); err != nil || n != 2000 {
		t.Fatalf("parseGauge: %d, %v; want 2000", n, err)
	}
	if _, err := parseGauge(strings.NewReader("relay_lanes 3\n"), "relay_lanes_bound"); err == nil {
		t.Fatal("parseGauge found a series that is not there")
	}
}

// TestAccountsTable: without --json a header and the line.
func TestAccountsTable(t *testing.T) {
	var out bytes.Buffer
	r := AccountsResult{Accounts: 2000, BindS: 3.25, OfferedMsgsPerS: 1000, AcceptedMsgsPerS: 998, P99Ms: 41.5, PacingViolations: 0}
	if err := printAccounts(&out, false, r); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(strings.TrimSpace(lines[0]), "accounts") || !slices.Contains(strings.Fields(lines[1]), "3.25") ||
		!slices.Contains(strings.Fields(lines[1]), "998") || !slices.Contains(strings.Fields(lines[1]), "41.5") {
		t.Fatalf("table:\n%s", out.String())
	}
}
