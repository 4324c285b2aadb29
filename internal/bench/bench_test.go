package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"relay365/internal/message"
)

// TestRunSmoke runs one small line, each part in its own process: relay
// serve delivered every message, and every figure is there and sane. No
// figure is compared with a target (figures come from `relay bench`, not
// from tests).
func TestRunSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	var pids []int
	cfg := Config{Messages: 200, Conns: []int{1}, Size: 2048, Rate: 200, Latency: 20, Sync: []string{"always"}, JSON: true, Dir: t.TempDir(),
		OnChild: func(pid int) { pids = append(pids, pid) }}
	results, err := Run(ctx, cfg, &out)
	if err != nil {
		t.Fatalf("Run: %v\noutput:\n%s", err, out.String())
	}
	// The sink, relay serve and the ceiling client, each its own process.
	if len(pids) != 3 || slices.Contains(pids, os.Getpid()) || pids[0] == pids[1] || pids[1] == pids[2] {
		t.Errorf("children %v, want 3 processes (sink, relay serve, ceiling client)", pids)
	}
	checkGone(t, pids)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || len(results) != 1 {
		t.Fatalf("want 1 line, got %d lines, %d results:\n%s", len(lines), len(results), out.String())
	}
	fields := []string{"conns", "messages", "ceiling_msgs_per_s", "relay_msgs_per_s", "ratio", "p50_ms", "p95_ms", "p99_ms",
		"relay_cpu_s_per_1k_msgs", "ceiling_cpu_s_per_1k_msgs", "peak_rss_mb", "store_writes_per_msg", "sync", "publish_batch"}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			t.Errorf("no %q: %s", f, lines[0])
		}
	}
	r := results[0]
	if r.Conns != 1 || r.Sync != "always" || r.Messages != 200 || r.Batch != 100 {
		t.Errorf("conns %d sync %s messages %d batch %d, want 1 always 200 100 (the default: atomic batches)", r.Conns, r.Sync, r.Messages, r.Batch)
	}
	if r.CeilingMsgsPerS <= 0 || r.RelayMsgsPerS <= 0 || r.Ratio <= 0 {
		t.Errorf("throughputs not positive: %s", lines[0])
	}
	if r.P50Ms <= 0 || r.P50Ms > r.P95Ms || r.P95Ms > r.P99Ms {
		t.Errorf("percentiles not ordered: %s", lines[0])
	}
	if r.RelayCPUSPer1kMsgs <= 0 || r.CeilingCPUSPer1kMsgs <= 0 || r.PeakRSSMB <= 0 {
		t.Errorf("cpu or rss figure missing: %s", lines[0])
	}
	// Each message is stored in MAIL and removed by its ack: at least two
	// writes, whatever else the relay stores.
	if r.WritesPerMsg < 2 {
		t.Errorf("store writes per message %.2f, want at least 2 (stored, then removed by the ack): %s", r.WritesPerMsg, lines[0])
	}
}

// TestCancelLeavesNoChild cancels the bench while its children run: Run
// returns the cancellation, and none of the processes it started is left.
func TestCancelLeavesNoChild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pids []int
	cfg := Config{Messages: 100000, Conns: []int{1}, Sync: []string{"always"}, Dir: t.TempDir(),
		OnChild: func(pid int) {
			pids = append(pids, pid)
			if len(pids) == 3 { // the ceiling client started: all three are up
				cancel()
			}
		}}
	_, err := Run(ctx, cfg, io.Discard)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want the cancellation", err)
	}
	if len(pids) != 3 {
		t.Fatalf("children %v, want 3 started before the cancel", pids)
	}
	checkGone(t, pids)
}

// checkGone: no process of pids exists any more (each was waited for, so
// not even a zombie is left).
func checkGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child %d still exists (kill 0: %v)", pid, err)
		}
	}
}

// TestTable: without --json a header and one row per result.
func TestTable(t *testing.T) {
	var out bytes.Buffer
	p := newPrinter(&out, false)
	for _, c := range []int{1, 16} {
		if err := p.print(Result{Sync: "always", Conns: c, Messages: 20000, CeilingMsgsPerS: 3000, RelayMsgsPerS: 2700, Ratio: 0.9}); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "sync") || !strings.Contains(lines[2], " 16 ") || !strings.Contains(lines[2], "0.90") {
		t.Fatalf("table:\n%s", out.String())
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"ok", func(c *Config) {}, ""},
		{"messages", func(c *Config) { c.Messages = -1 }, "--messages -1"},
		{"conns", func(c *Config) { c.Conns = []int{1, 65} }, "--conns: 65 connections"},
		{"size", func(c *Config) { c.Size = 100 }, "--size 100"},
		{"rate", func(c *Config) { c.Rate = -3 }, "--rate -3"},
		{"sync", func(c *Config) { c.Sync = []string{"sometimes"} }, `"sometimes"`},
		{"memory limit", func(c *Config) { c.MemoryLimit = 8 << 20 }, "--memory-limit 8MiB"},
		{"latency", func(c *Config) { c.Latency = -1 }, "--latency-messages -1"},
		{"batch of one", func(c *Config) { c.Batch = 1 }, ""},
		{"batch", func(c *Config) { c.Batch = 101 }, "--publish-batch 101: want 1 (each message on its own) to 100"},
		{"accounts ok", func(c *Config) { c.Accounts, c.Sync = 2000, []string{"always"} }, ""},
		{"accounts", func(c *Config) { c.Accounts = -2 }, "--accounts -2"},
		{"accounts settle", func(c *Config) { c.Accounts, c.Sync, c.AccountsSettle = 20, []string{"always"}, -time.Second }, "--accounts-settle -1s"},
		{"accounts idle", func(c *Config) { c.Accounts, c.Sync, c.AccountsIdle = 20, []string{"always"}, 0 }, "--accounts-idle 0s"},
		{"accounts duration", func(c *Config) { c.Accounts, c.Sync, c.AccountsDuration = 20, []string{"always"}, -time.Minute }, "--accounts-duration -1m0s"},
		{"accounts one sync", func(c *Config) { c.Accounts = 20 }, "--sync always,2m: --accounts runs one sync setting"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			c.Defaults()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[int]time.Duration{50: 50 * time.Millisecond, 95: 95 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%d = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 99) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

// TestMessageSize: the rendered messages are about --size bytes.
func TestMessageSize(t *testing.T) {
	mailbox := "bench-c1@contoso.com"
	for _, size := range []int{minSize, 2048, 64 << 10} {
		r, err := message.Render(newMessage(mailbox, size, "relay-bench-c1-12345", "relay 12345"), message.Sender{Mailbox: mailbox}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if got := len(r.Data); got < size*9/10 || got > size*11/10 {
			t.Errorf("--size %d: rendered %d bytes", size, got)
		}
	}
}

// TestRunIngressSmoke runs the ingress mode with tiny numbers: messages
// submitted over SMTP (STARTTLS, AUTH PLAIN) reach the sink, and every
// line has every field with sane values.
func TestRunIngressSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	var pids []int
	cfg := Config{Messages: 50, Conns: []int{3}, Size: 1024, Rate: 200, Latency: 20, JSON: true, Dir: t.TempDir(),
		OnChild: func(pid int) { pids = append(pids, pid) }}
	results, err := RunIngress(ctx, cfg, &out)
	if err != nil {
		t.Fatalf("RunIngress: %v\noutput:\n%s", err, out.String())
	}
	if len(pids) != 2 {
		t.Errorf("children %v, want 2 (sink, relay serve)", pids)
	}
	checkGone(t, pids)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || len(results) != 1 {
		t.Fatalf("want 1 line (sync always × 1 connection count), got %d lines, %d results:\n%s", len(lines), len(results), out.String())
	}
	fields := []string{"mode", "sync", "conns", "messages", "size", "msgs_per_s", "accept_msgs_per_s", "load_p50_ms", "load_p99_ms",
		"rate", "latency_messages", "p50_ms", "p95_ms", "p99_ms", "accept_p99_ms", "relay_cpu_s_per_1k_msgs", "peak_rss_mb", "store_writes_per_msg"}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, line)
		}
		for _, f := range fields {
			if _, ok := m[f]; !ok {
				t.Errorf("line %d has no %q: %s", i, f, line)
			}
		}
		r := results[i]
		switch {
		case r.Mode != "ingress" || r.Conns != cfg.Conns[i] || r.Sync != "always" || r.Messages != 50 || r.LatencyMessages != 20:
			t.Errorf("line %d: mode %s conns %d sync %s messages %d latency messages %d, want ingress %d always 50 20",
				i, r.Mode, r.Conns, r.Sync, r.Messages, r.LatencyMessages, cfg.Conns[i])
		case r.MsgsPerS <= 0 || r.AcceptMsgsPerS < r.MsgsPerS:
			t.Errorf("line %d: throughputs not positive, or delivery ended before acceptance: %s", i, line)
		case r.LoadP50Ms <= 0 || r.LoadP50Ms > r.LoadP99Ms || r.AcceptP99Ms <= 0:
			t.Errorf("line %d: load percentiles: %s", i, line)
		case r.P50Ms <= 0 || r.P50Ms > r.P95Ms || r.P95Ms > r.P99Ms:
			t.Errorf("line %d: percentiles not ordered: %s", i, line)
		case r.RelayCPUSPer1kMsgs <= 0 || r.PeakRSSMB <= 0 || r.WritesPerMsg < 2:
			t.Errorf("line %d: cpu, rss or store writes figure missing: %s", i, line)
		}
	}
}

// TestIngressTable: without --json a header and one row per result.
func TestIngressTable(t *testing.T) {
	var out bytes.Buffer
	p := &ingressPrinter{out: &out}
	for _, c := range []int{1, 16} {
		if err := p.print(IngressResult{Mode: "ingress", Sync: "always", Conns: c, Messages: 20000, MsgsPerS: 612.4, P99Ms: 7.25}); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "sync") || !strings.Contains(lines[0], "msgs/s") ||
		!strings.Contains(lines[2], " 16 ") || !strings.Contains(lines[2], " 612 ") || !strings.Contains(lines[2], " 7.2") {
		t.Fatalf("table:\n%s", out.String())
	}
}

// TestIngressDefaults: 16 submission connections and the durable sync
// unless given.
func TestIngressDefaults(t *testing.T) {
	var c Config
	c.IngressDefaults()
	if len(c.Conns) != 1 || c.Conns[0] != 16 || len(c.Sync) != 1 || c.Sync[0] != "always" {
		t.Fatalf("ingress defaults: conns %v sync %v", c.Conns, c.Sync)
	}
	c = Config{Conns: []int{4}, Sync: []string{"2m"}}
	c.IngressDefaults()
	if c.Conns[0] != 4 || c.Sync[0] != "2m" {
		t.Fatalf("ingress defaults replaced given values: conns %v sync %v", c.Conns, c.Sync)
	}
}

// TestRunLargeSmoke runs the large-message line small (a few 1 MiB
// messages through the body store), each part in its own process: the
// bench stores each body as the producer role may (a body store opened
// as the admin's would ask for what the producer may not, and wait), and
// relay serve delivers every message.
func TestRunLargeSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cfg := Config{Messages: 4, Conns: []int{2}, Size: 1 << 20, Sync: []string{"always"}, JSON: true, Dir: t.TempDir()}
	results, err := Run(ctx, cfg, &out)
	if err != nil {
		t.Fatalf("Run: %v\noutput:\n%s", err, out.String())
	}
	if len(results) != 1 || results[0].RelayMsgsPerS <= 0 || results[0].PeakRSSMB <= 0 || results[0].LatencyMessages != 0 {
		t.Fatalf("want one line with relay throughput and peak RSS and no latency run:\n%s", out.String())
	}
}
