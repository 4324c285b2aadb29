package authcmd_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/account"
	"relay365/internal/authcmd"
	"relay365/internal/cli"
	"relay365/internal/fakeo365"
	"relay365/internal/queue/queuetest"
	"relay365/internal/token"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "11111111-2222-3333-4444-555555555555"
	mailbox  = "alerts@contoso.com"
)

// world is one test's Office 365 (the fake), NATS and key file, plus
// direct handles on the buckets to check what authtool stored.
type world struct {
	t        *testing.T
	fake     *fakeo365.Server
	clock    *clock
	natsURL  string
	keyFile  string
	accounts *account.Registry
	tokens   *token.Store
	js       jetstream.JetStream // to read the buckets' raw bytes
}

// clock is a settable offset from the real time, for the fake's Now.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func newWorld(t *testing.T, cfg fakeo365.Config) *world {
	t.Helper()
	q := queuetest.Start(t)
	w := &world{t: t, clock: &clock{}, natsURL: q.URL, js: q.JS}
	w.keyFile = filepath.Join(t.TempDir(), "token.key")
	if _, err := token.GenerateKeyFile(w.keyFile); err != nil {
		t.Fatal(err)
	}
	w.startFake(cfg)
	ctx := testCtx(t)
	var err error
	if w.accounts, err = account.OpenRegistry(ctx, q.JS); err != nil {
		t.Fatal(err)
	}
	keys, err := token.LoadKeyring(w.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if w.tokens, err = token.OpenStore(ctx, q.JS, keys); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) startFake(cfg fakeo365.Config) {
	cfg.Dir = w.t.TempDir()
	if cfg.DefaultMailbox == "" {
		cfg.DefaultMailbox = mailbox
	}
	if cfg.Now == nil {
		cfg.Now = w.clock.now
	}
	f, err := fakeo365.Start(cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { f.Close() })
	w.fake = f
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// target is the flags that point an enrolment at the fake.
func (w *world) target(cmd, alias, mbox string) []string {
	return []string{cmd, "--account", alias, "--mailbox", mbox, "--tenant", tenant, "--client-id", clientID,
		"--authority", w.fake.AuthorityURL(), "--smtp", w.fake.SMTPAddr(), "--ca-file", w.fake.CAFile()}
}

func (w *world) login(alias, mbox string, extra ...string) []string {
	return append(append(w.target("login", alias, mbox), "--no-browser"), extra...)
}

// person plays the human at the other end of a run.
type person struct {
	// follow: open the sign-in URL printed on stderr with an HTTP client,
	// as a browser would; rewrite may change it first.
	follow  bool
	rewrite func(string) string
	// onLine sees every stderr line as it is written.
	onLine func(line string)
	// cancelOnURL interrupts the run (Ctrl-C) once the URL is printed.
	cancelOnURL bool
	env         map[string]string
	stdin       string
	openBrowser func(string) error
}

type result struct {
	code           int
	stdout, stderr string
	signInURL      string
}

// run runs authtool in process with RELAY_NATS_URL and RELAY_TOKEN_KEY_FILE
// pointing at this world.
func (w *world) run(p person, args ...string) result {
	w.t.Helper()
	ctx, cancel := context.WithCancel(testCtx(w.t))
	defer cancel()
	urls := make(chan string, 1)
	stderr := &lineWriter{onLine: func(line string) {
		if p.onLine != nil {
			p.onLine(line)
		}
		if s := strings.TrimSpace(line); strings.HasPrefix(line, "  http") && strings.Contains(s, "/authorize?") {
			select {
			case urls <- s:
			default:
			}
		}
	}}
	var signIn atomic.Value
	signIn.Store("")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case u := <-urls:
			signIn.Store(u)
			switch {
			case p.cancelOnURL:
				cancel()
			case p.follow:
				if p.rewrite != nil {
					u = p.rewrite(u)
				}
				browse(ctx, u)
			}
		case <-ctx.Done():
		}
	}()
	env := map[string]string{"RELAY_NATS_URL": w.natsURL, "RELAY_TOKEN_KEY_FILE": w.keyFile}
	for k, v := range p.env {
		env[k] = v
	}
	var stdout bytes.Buffer
	code := authcmd.Run(ctx, args, authcmd.Env{
		Env: cli.Env{Stdin: strings.NewReader(p.stdin), Stdout: &stdout, Stderr: stderr,
			Getenv: func(k string) string { return env[k] }},
		OpenBrowser: p.openBrowser,
		DevicePoll:  5 * time.Millisecond,
	})
	cancel()
	wg.Wait()
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String(), signInURL: signIn.Load().(string)}
	if w.t.Failed() || testing.Verbose() {
		w.t.Logf("authtool %s → exit %d\nstdout:\n%s\nstderr:\n%s", args[0], code, r.stdout, r.stderr)
	}
	return r
}

// browse follows u (authorize → 302 → the loopback redirect) like a browser.
func browse(ctx context.Context, u string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// lineWriter collects output and reports complete lines as they arrive.
type lineWriter struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	onLine  func(string)
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.all.Write(p)
	l.partial = append(l.partial, p...)
	var lines []string
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	l.mu.Unlock()
	for _, line := range lines {
		l.onLine(line)
	}
	return len(p), nil
}

func (l *lineWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// stored reports whether the account and its token record exist.
func (w *world) stored(alias string) (acct, tokens bool) {
	w.t.Helper()
	ctx := testCtx(w.t)
	_, err := w.accounts.Get(ctx, alias)
	if err != nil && !errors.Is(err, account.ErrNotFound) {
		w.t.Fatal(err)
	}
	acct = err == nil
	_, err = w.tokens.RawGet(ctx, alias)
	if err != nil && !errors.Is(err, token.ErrNotFound) {
		w.t.Fatal(err)
	}
	return acct, err == nil
}

func (w *world) mustBeEmpty(alias string) {
	w.t.Helper()
	if a, tk := w.stored(alias); a || tk {
		w.t.Fatalf("account %s: registry entry stored %t, tokens stored %t; want nothing stored", alias, a, tk)
	}
}

func (w *world) record(alias string) token.Record {
	w.t.Helper()
	rec, _, err := w.tokens.Get(testCtx(w.t), alias)
	if err != nil {
		w.t.Fatal(err)
	}
	return rec
}

// noSecrets fails if any secret of the stored records appears in outs.
func noSecrets(t *testing.T, recs []token.Record, outs ...string) {
	t.Helper()
	for _, rec := range recs {
		for _, secret := range []string{rec.AccessToken, rec.RefreshToken, rec.ClientSecret} {
			if secret == "" {
				continue
			}
			for _, out := range outs {
				if strings.Contains(out, secret) {
					t.Fatalf("output holds a secret of account %s", rec.Account)
				}
			}
		}
	}
}
