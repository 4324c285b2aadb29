package sandbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/daemon"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/sandbox"
	"relay365/internal/sandbox/sandboxtest"
	"relay365/internal/testutil"
	"relay365/producer"
)

var fastRetry = sandboxtest.FastRetry

func start(t *testing.T, dataDir string) (*sandbox.Sandbox, *testutil.Buffer) {
	return sandboxtest.Start(t, dataDir)
}

// connect is a producer as producers connect (its seed, its permissions:
// mail.send.> only), and the relay's own JetStream for what the test
// checks in the streams and buckets.
func connect(t *testing.T, s *sandbox.Sandbox) (*nats.Conn, jetstream.JetStream, *producer.Producer) {
	t.Helper()
	nc, err := queue.ConnectWith(s.Daemon.NATSURL, "test-producer", s.Daemon.ClientOptions(roles.Producer))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js := s.Daemon.JS
	p, err := producer.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, p
}

func testCtx(t *testing.T) context.Context { return ctxFor(t, 60*time.Second) }

// largeCtx is the deadline of a test that moves 30 MB messages: under
// -race on two busy cores one took over a minute.
func largeCtx(t *testing.T) context.Context { return ctxFor(t, 4*time.Minute) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitIdle waits until MAIL holds nothing: every message acked or
// dead-lettered.
func waitIdle(t *testing.T, ctx context.Context, js jetstream.JetStream) {
	t.Helper()
	s, err := js.Stream(ctx, queue.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "MAIL to drain", func() bool {
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
}

func TestSandboxConnectsThroughConsent(t *testing.T) {
	s, _ := start(t, t.TempDir())
	// The consent test mail is the first captured message.
	msgs := s.Fake.Messages()
	if len(msgs) != 1 || !strings.Contains(msgs[0].Subject, "sandbox is connected") {
		t.Fatalf("want the consent test mail captured, got %+v", msgs)
	}
	if s.Fake.TokenCalls("authorization_code") != 1 {
		t.Fatalf("consent must use the authorization code grant once, got %d", s.Fake.TokenCalls("authorization_code"))
	}
	acct, err := s.Daemon.Accounts.Get(testCtx(t), sandbox.Account)
	if err != nil || acct.Mailbox != sandbox.Mailbox {
		t.Fatalf("account not stored: %+v %v", acct, err)
	}
}

func TestHundredMessagesDelivered(t *testing.T) {
	s, logs := start(t, t.TempDir())
	ctx := testCtx(t)
	_, js, p := connect(t, s)
	const n = 100
	for i := range n {
		_, err := p.Publish(ctx, &producer.Message{
			ID: fmt.Sprintf("m-%03d", i), Account: sandbox.Account,
			From: "Ops Alerts <noreply@contoso.com>",
			To:   []string{fmt.Sprintf("ops%d@contoso.com", i)}, Bcc: []string{"audit@contoso.com"},
			Subject: fmt.Sprintf("alert %03d", i), Text: fmt.Sprintf("body %03d", i),
			Headers: map[string]string{"X-Alert-Id": fmt.Sprint(i)},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := s.Fake.WaitMessages(ctx, n+1)
	if err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	seen := map[string]bool{}
	for _, m := range msgs[1:] {
		parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		i := strings.TrimPrefix(parsed.Header.Get("Subject"), "alert ")
		if seen[i] {
			t.Fatalf("message %s delivered twice", i)
		}
		seen[i] = true
		body, _ := io.ReadAll(parsed.Body)
		wantTo := fmt.Sprintf("ops%s@contoso.com", strings.TrimLeft(i, "0"))
		if i == "000" {
			wantTo = "ops0@contoso.com"
		}
		switch {
		case m.From != sandbox.Mailbox || m.Mailbox != sandbox.Mailbox:
			t.Fatalf("envelope from %q as %q", m.From, m.Mailbox)
		case len(m.To) != 2 || m.To[0] != wantTo || m.To[1] != "audit@contoso.com":
			t.Fatalf("envelope to %v, want [%s audit@contoso.com]", m.To, wantTo)
		case parsed.Header.Get("From") != `"Ops Alerts" <alerts@contoso.com>`:
			t.Fatalf("From %q: the rewrite policy must keep the name on the mailbox", parsed.Header.Get("From"))
		case parsed.Header.Get("Reply-To") != `"Ops Alerts" <noreply@contoso.com>`:
			t.Fatalf("Reply-To %q", parsed.Header.Get("Reply-To"))
		case parsed.Header.Get("Bcc") != "":
			t.Fatal("Bcc header leaked")
		case parsed.Header.Get("X-Alert-Id") == "" || parsed.Header.Get("Message-Id") == "":
			t.Fatalf("headers missing: %v", parsed.Header)
		case strings.TrimSpace(string(body)) != "body "+i:
			t.Fatalf("body %q for %s", body, i)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct messages delivered, want %d", len(seen), n)
	}
	assertNoSecrets(t, s, logs.String())
}

func TestSameIDDeliveredOnce(t *testing.T) {
	s, _ := start(t, t.TempDir())
	ctx := testCtx(t)
	_, js, p := connect(t, s)
	msg := func() *producer.Message {
		return &producer.Message{ID: "alert-7f3a", Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "once", Text: "x"}
	}
	r1, err := p.Publish(ctx, msg())
	if err != nil || r1.Duplicate {
		t.Fatal(r1, err)
	}
	r2, err := p.Publish(ctx, msg())
	if err != nil || !r2.Duplicate || r2.Seq != r1.Seq {
		t.Fatalf("second publish must be reported as duplicate of %d: %+v %v", r1.Seq, r2, err)
	}
	// A later message proves the queue moved past both.
	if _, err := p.Publish(ctx, &producer.Message{ID: "after", Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "after", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fake.WaitMessages(ctx, 3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	count := 0
	for _, m := range s.Fake.Messages() {
		if m.Subject == "once" {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("message with one id delivered %d times", count)
	}
}

func TestBadMessagesDeadLetteredOthersGo(t *testing.T) {
	s, logs := start(t, t.TempDir())
	ctx := testCtx(t)
	_, js, p := connect(t, s)
	bad := []struct {
		subject, data, reason string
	}{
		{"mail.send.sandbox", `{"account":"sandbox","to":["ops@contoso.com"]`, "bad JSON"},
		{"mail.send.sandbox", `{"account":"sandbox","subject":"no one","text":"x"}`, "no recipients"},
		{"mail.send.sandbox", `{"account":"sandbox","to":["ops@contoso.com"],"subject":"hi\r\nBcc: victim@evil.com","text":"x"}`, "header injection"},
		{"mail.send.nobody", `{"account":"nobody","to":["ops@contoso.com"],"subject":"x","text":"x"}`, `unknown account "nobody"`},
	}
	for i, b := range bad {
		if _, err := queue.Publish(ctx, js, strings.TrimPrefix(b.subject, queue.SubjectPrefix), fmt.Sprintf("bad-%d", i), []byte(b.data)); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(ctx, &producer.Message{Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: fmt.Sprintf("good %d", i), Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Fake.WaitMessages(ctx, 1+len(bad)); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	if got := len(s.Fake.Messages()); got != 1+len(bad) {
		t.Fatalf("captured %d, want the test mail and %d good messages", got, len(bad))
	}
	dlq, err := js.Stream(ctx, queue.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := dlq.Info(ctx)
	if info.State.Msgs != uint64(len(bad)) {
		t.Fatalf("MAIL_DLQ holds %d, want %d", info.State.Msgs, len(bad))
	}
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := dlq.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		i := -1
		fmt.Sscanf(m.Header.Get(jetstream.MsgIDHeader), "bad-%d:dlq", &i)
		if i < 0 || i >= len(bad) {
			t.Fatalf("unexpected dead letter %v", m.Header)
		}
		if reason := m.Header.Get(queue.HdrReason); !strings.Contains(reason, bad[i].reason) {
			t.Fatalf("dead letter %d reason %q, want it to mention %q", i, reason, bad[i].reason)
		}
		if m.Header.Get(queue.HdrOrigSubject) != bad[i].subject || string(m.Data) != bad[i].data {
			t.Fatalf("dead letter %d does not keep the original: %v %q", i, m.Header, m.Data)
		}
		if m.Header.Get(queue.HdrClass) != "invalid" {
			t.Fatalf("class %q", m.Header.Get(queue.HdrClass))
		}
	}
	assertNoSecrets(t, s, logs.String())
}

func TestTemporaryFailureRetriedPermanentDeadLettered(t *testing.T) {
	s, _ := start(t, t.TempDir())
	ctx := testCtx(t)
	_, js, p := connect(t, s)
	s.Fake.FailNextData(2) // 451 4.7.0 twice, then accepted
	if _, err := p.Publish(ctx, &producer.Message{ID: "retry-me", Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "retried", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fake.WaitMessages(ctx, 2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	if got := s.Fake.Replies()["451 4.7.0"]; got != 2 {
		t.Fatalf("fake sent %d 451 replies, want 2", got)
	}
	// 550 5.7.60: the account may not send as this From and the policy
	// (allow) does not rewrite: permanent, dead-lettered with the reply.
	acct, _ := s.Daemon.Accounts.Get(ctx, sandbox.Account)
	acct.FromPolicy = "allow"
	acct.SendAs = []string{"noreply@contoso.com"}
	// The lane takes registry changes from a KV watch; the connection
	// limit, changed in the same record, shows when it has this one (a
	// message published before would still be rewritten and sent).
	acct.MaxConns = 2
	if err := s.Daemon.Accounts.Put(ctx, acct); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, ctx, "the lane to take the new policy", func() bool {
		for _, l := range s.Daemon.Engine.Status() {
			if l.Account == sandbox.Account {
				return l.ConnLimit == 2
			}
		}
		return false
	})
	if _, err := p.Publish(ctx, &producer.Message{ID: "sendas", Account: sandbox.Account, From: "noreply@contoso.com", To: []string{"ops@contoso.com"}, Subject: "send-as", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, js)
	dlq, _ := js.Stream(ctx, queue.StreamDLQ)
	m, err := dlq.GetLastMsgForSubject(ctx, queue.DLQPrefix+sandbox.Account)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(queue.HdrClass) != "message" || !strings.HasPrefix(m.Header.Get(queue.HdrLastReply), "550 5.7.60") {
		t.Fatalf("want a message-class dead letter with the 550 5.7.60 reply, got %v", m.Header)
	}
}

func TestRestartKeepsQueuedMessages(t *testing.T) {
	dir := t.TempDir()
	s, _ := start(t, dir)
	ctx := testCtx(t)
	_, _, p := connect(t, s)
	s.Fake.FailNextData(1000) // nothing gets through before the restart
	for i := range 3 {
		if _, err := p.Publish(ctx, &producer.Message{ID: fmt.Sprint("kept-", i), Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: "kept", Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the relay has tried (and failed) at least once.
	testutil.Eventually(t, ctx, "a failed attempt", func() bool { return s.Fake.Replies()["451 4.7.0"] > 0 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := start(t, dir)
	msgs, err := s2.Fake.WaitMessages(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, m := range msgs {
		if m.Subject == "kept" {
			kept++
		}
	}
	if kept != 3 {
		t.Fatalf("%d of 3 queued messages delivered after restart", kept)
	}
}

func TestSandboxHTTP(t *testing.T) {
	s, _ := start(t, t.TempDir())
	base := "http://" + s.Daemon.HTTPAddr
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}
	code, body := get("/sandbox/messages")
	var list []sandbox.Captured
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].To[0] != sandbox.Mailbox {
		t.Fatalf("/sandbox/messages %d %s", code, body)
	}
	code, body = get("/metrics")
	if code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics %d", code)
	}
	code, body = get("/status")
	var st daemon.Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Accounts) != 1 || st.Accounts[0].TokenState != "healthy" {
		t.Fatalf("/status %d %s", code, body)
	}
	if !strings.Contains(s.Banner(t.TempDir()), "relay publish --nats-url "+s.Daemon.NATSURL) {
		t.Fatal("banner lacks a ready-to-paste publish line")
	}
}

// assertNoSecrets scans logs, metrics and /status for the account's live
// tokens and the sealing key.
func assertNoSecrets(t *testing.T, s *sandbox.Sandbox, logs string) {
	t.Helper()
	ctx := testCtx(t)
	rec, _, err := s.Daemon.Store.Get(ctx, sandbox.Account)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(filepath.Dir(s.Fake.CAFile()), "..", "token.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, keyB64, _ := strings.Cut(strings.TrimSpace(string(key)), ":")
	surfaces := map[string]string{"logs": logs}
	for _, path := range []string{"/metrics", "/status"} {
		resp, err := http.Get("http://" + s.Daemon.HTTPAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		surfaces[path] = string(b)
	}
	for name, text := range surfaces {
		for what, secret := range map[string]string{"access token": rec.AccessToken, "refresh token": rec.RefreshToken, "key": keyB64} {
			if secret == "" {
				t.Fatalf("no %s to look for", what)
			}
			if strings.Contains(text, secret) {
				t.Fatalf("%s contains the %s", name, what)
			}
		}
	}
}

// TestGoProducerAsDocumented connects as the producer package's
// documentation says a Go service does (the producer seed, the inbox
// prefix producer.InboxPrefix) and publishes; the constant is the
// producer role's prefix, and nats.go's default inbox is refused by the
// role's permissions, which is why the documentation names it.
func TestGoProducerAsDocumented(t *testing.T) {
	if producer.InboxPrefix != roles.Producer.InboxPrefix() {
		t.Fatalf("producer.InboxPrefix %q, the producer role's %q", producer.InboxPrefix, roles.Producer.InboxPrefix())
	}
	dir := t.TempDir()
	s, _ := start(t, dir)
	ctx := testCtx(t)
	seed, err := nats.NkeyOptionFromSeed(roles.SeedFile(dir, roles.Producer))
	if err != nil {
		t.Fatal(err)
	}
	publish := func(id string, opts ...nats.Option) error {
		nc, err := nats.Connect(s.Daemon.NATSURL, append([]nats.Option{seed}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		p, err := producer.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err = p.Publish(pctx, &producer.Message{ID: id, Account: sandbox.Account, To: []string{"ops@contoso.com"}, Subject: id, Text: "x"})
		return err
	}
	if err := publish("documented", nats.CustomInboxPrefix(producer.InboxPrefix)); err != nil {
		t.Fatalf("publish as documented: %v", err)
	}
	testutil.Eventually(t, ctx, "the documented producer's message delivered", func() bool {
		for _, m := range s.Fake.Messages() {
			if m.Subject == "documented" {
				return true
			}
		}
		return false
	})
	// nats.go's default inbox: refused by the role's permissions, which is
	// why the documentation names the prefix; the error says so.
	err = publish("default-inbox")
	if err == nil {
		t.Fatal("a publish with nats.go's default inbox succeeded under the producer role's permissions: the documentation's reason is gone")
	}
	if !strings.Contains(err.Error(), "refused this connection's reply inbox _INBOX: connect with nats.CustomInboxPrefix(producer.InboxPrefix)") {
		t.Fatalf("publish with the default inbox: %v, want the remedy", err)
	}
}
