package relaycmd

import (
	"context"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/limits"
	"relay365/internal/queue/queuetest"
)

// relay publish and relay sendmail against an account whose limit is
// 4 KiB (relay serve's limits service answering): over it, publish exits
// 1 and sendmail 65 (EX_DATAERR: never sendable as it is), each naming
// the size, the limit and the account, and nothing is queued; under it,
// both queue.
func TestCommandsRefuseOverTheAccountLimit(t *testing.T) {
	env, ctx := startSmallAccount(t)
	vars := map[string]string{"RELAY_NATS_URL": env.URL, "RELAY_ACCOUNT": "small"}
	long := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 128) // 8 KiB
	wants := []string{"is over the size limit of 4096 bytes (4.0 KB) of account small", "message of "}

	r := run(t, vars, "", "publish", "--nats-url", env.URL, "--account", "small", "--to", "ops@contoso.com", "--subject", "big", "--text", long)
	if r.code != 1 {
		t.Fatalf("publish over the limit: exit %d, %s", r.code, r.stderr)
	}
	r2 := run(t, vars, "Subject: big\n\n"+long+"\n", "sendmail", "-i", "ops@contoso.com")
	if r2.code != exDataErr {
		t.Fatalf("sendmail over the limit: exit %d, want %d: %s", r2.code, exDataErr, r2.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) || !strings.Contains(r2.stderr, w) {
			t.Errorf("publish %q / sendmail %q: want %q", r.stderr, r2.stderr, w)
		}
	}
	if n := mailCount(t, ctx, env.JS); n != 0 {
		t.Fatalf("%d queued after the refusals", n)
	}
	if r := run(t, vars, "", "publish", "--nats-url", env.URL, "--account", "small", "--to", "ops@contoso.com", "--subject", "short", "--text", "ok"); r.code != 0 {
		t.Fatalf("publish under the limit: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, vars, "Subject: short\n\nok\n", "sendmail", "-i", "ops@contoso.com"); r.code != 0 {
		t.Fatalf("sendmail under the limit: exit %d, %s", r.code, r.stderr)
	}
	if n := mailCount(t, ctx, env.JS); n != 2 {
		t.Fatalf("%d queued, want 2", n)
	}
}

// startSmallAccount starts MAIL and relay serve's limits service, which
// knows one account, "small", whose limit is 4 KiB, and answers before
// it returns.
func startSmallAccount(t *testing.T) (*queuetest.Env, context.Context) {
	t.Helper()
	env, ctx := queuetest.StartMail(t)
	acct := account.Account{Alias: "small", Mailbox: "small@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c", MaxMessageBytes: 4 << 10}
	if n := startLimits(t, ctx, env, acct); n != 4<<10 {
		t.Fatalf("limits service: %d, want 4 KiB", n)
	}
	return env, ctx
}

// startLimits registers acct and starts relay serve's limits service,
// stopped when the test ends. It returns once the service answers for
// acct (the commands give it 2 s and then assume 35 MB, which is not
// what these tests are about), with the limit it answered.
func startLimits(t *testing.T, ctx context.Context, env *queuetest.Env, acct account.Account) int64 {
	t.Helper()
	reg, err := account.OpenRegistry(ctx, env.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, acct); err != nil {
		t.Fatal(err)
	}
	svc, err := limits.Start(env.NC, reg, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	n, err := limits.Lookup(ctx, env.NC, acct.Alias)
	if err != nil {
		t.Fatalf("limits service: %v", err)
	}
	return n
}

// relay publish to an alias relay serve does not know queues the message
// (an account being added keeps its first messages) but says so, once: a
// typo in --account otherwise looked like success.
func TestPublishWarnsOfAnUnknownAccount(t *testing.T) {
	env, ctx := queuetest.StartMail(t)
	startLimits(t, ctx, env, account.Account{Alias: "alerts", Mailbox: "alerts@contoso.com", Tenant: "contoso.onmicrosoft.com", ClientID: "c"})
	r := run(t, nil, "", "publish", "--nats-url", env.URL, "--account", "alerst", "--to", "ops@contoso.com", "--subject", "s", "--text", "t")
	if r.code != 0 || !strings.Contains(r.stderr, `knows no account "alerst"`) || !strings.Contains(r.stdout, "queued") {
		t.Fatalf("publish to an unknown account: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "a typo in --account?") {
		t.Fatalf("publish --account to an unknown account: stderr %q; want it to point at --account", r.stderr)
	}
	r = run(t, nil, "", "publish", "--nats-url", env.URL, "--account", "alerts", "--to", "ops@contoso.com", "--subject", "s", "--text", "t")
	if r.code != 0 || strings.Contains(r.stderr, "warning") {
		t.Fatalf("publish to a known account: exit %d, stderr %q", r.code, r.stderr)
	}
	// The account named in the file, as the README's JSON example does:
	// the hint points at the file's field, not at a flag never given.
	r = run(t, nil, `{"account":"alerst","to":["ops@contoso.com"],"subject":"s","text":"t"}`, "publish", "--nats-url", env.URL, "-f", "-")
	if r.code != 0 || !strings.Contains(r.stderr, `knows no account "alerst"`) || strings.Contains(r.stderr, "--account") ||
		!strings.Contains(r.stderr, `a typo in the message's "account"?`) {
		t.Fatalf("publish -f to an unknown account: exit %d, stderr %q; want the warning to point at the message's \"account\"", r.code, r.stderr)
	}
	if n := mailCount(t, ctx, env.JS); n != 3 {
		t.Fatalf("%d queued, want 3", n)
	}
}
