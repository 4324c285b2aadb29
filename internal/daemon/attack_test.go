package daemon_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/limits"
	"relay365/internal/queue"
	"relay365/internal/roles"
	"relay365/internal/testutil"
)

// prober is a client of one role that records the permission violations
// the server reports to it.
type prober struct {
	t    *testing.T
	role roles.Role
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func newProber(t *testing.T, url string, r roles.Role, o queue.ConnectOptions) *prober {
	t.Helper()
	p := &prober{t: t, role: r}
	opts, err := o.Options()
	if err != nil {
		t.Fatal(err)
	}
	p.nc, err = queue.Connect(url, "attacker-"+string(r), append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		p.mu.Lock()
		p.errs = append(p.errs, err.Error())
		p.mu.Unlock()
	}))...)
	if err != nil {
		t.Fatalf("%s connects: %v", r, err)
	}
	t.Cleanup(p.nc.Close)
	return p
}

func (p *prober) violated(kind, subject string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := `Permissions Violation for ` + kind + ` to "` + subject + `"`
	for _, e := range p.errs {
		if strings.Contains(e, want) {
			return true
		}
	}
	return false
}

// attack is one thing a role must not be able to do on the bus.
type attack struct {
	what    string
	subject string
	body    any  // a request's JSON body; nil for a plain publish
	sub     bool // a subscription, not a publish
	roles   []roles.Role
	control roles.Role // a role allowed to do it: proves the request is well formed ("" for none)
}

// attacks is the list every test of the bus runs, against the embedded
// server and against deploy/nats/auth.conf: SECURITY.md's promises, tried.
var attacks = []attack{
	{what: "ask the token service for a live access token", subject: "token.get", body: map[string]string{"account": "alerts"},
		roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}, control: roles.Worker},
	{what: "force a token refresh", subject: "token.refresh", body: map[string]string{"account": "alerts"},
		roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}},
	{what: "raise an account's \"SMTP refused its token\" alarm (or end it)", subject: "token.smtp_refused", body: map[string]string{"account": "alerts"},
		roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}, control: roles.Worker},
	{what: "mirror relay_tokens into a stream of its own", subject: "$JS.API.STREAM.CREATE.STEAL",
		body:  map[string]any{"name": "STEAL", "mirror": map[string]string{"name": "KV_relay_tokens"}, "storage": "memory"},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}, control: roles.Admin},
	{what: "source MAIL into relay_accounts with a subject transform", subject: "$JS.API.STREAM.CREATE.REWRITE",
		body: map[string]any{"name": "REWRITE", "storage": "memory", "sources": []any{map[string]any{
			"name": "MAIL", "subject_transforms": []any{map[string]string{"src": "mail.send.>", "dest": "$KV.relay_accounts.alerts"}}}}},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "cut MAIL_DLQ to one message (stream update)", subject: "$JS.API.STREAM.UPDATE.MAIL_DLQ",
		body:  map[string]any{"name": "MAIL_DLQ", "subjects": []string{"mail.dlq.>"}, "max_msgs": 1, "storage": "file"},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "purge MAIL_DLQ", subject: "$JS.API.STREAM.PURGE.MAIL_DLQ", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "delete MAIL_DLQ", subject: "$JS.API.STREAM.DELETE.MAIL_DLQ", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "delete MAIL", subject: "$JS.API.STREAM.DELETE.MAIL", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "purge MAIL", subject: "$JS.API.STREAM.PURGE.MAIL", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "cut MAIL to one message (stream update)", subject: "$JS.API.STREAM.UPDATE.MAIL",
		body:  map[string]any{"name": "MAIL", "subjects": []string{"mail.send.>"}, "retention": "workqueue", "max_msgs": 1, "storage": "file"},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "read a sealed token record (direct get)", subject: "$JS.API.DIRECT.GET.KV_relay_tokens.$KV.relay_tokens.alerts", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker}, control: roles.Tokens},
	{what: "read a sealed token record (stream get)", subject: "$JS.API.STREAM.MSG.GET.KV_relay_tokens", body: map[string]any{"last_by_subj": "$KV.relay_tokens.alerts"},
		roles: []roles.Role{roles.Producer, roles.Worker}},
	{what: "watch relay_tokens (a consumer on its stream, as a KV watch makes)", subject: "$JS.API.CONSUMER.CREATE.KV_relay_tokens.watch",
		body:  map[string]any{"stream_name": "KV_relay_tokens", "config": map[string]any{"name": "watch", "ack_policy": "none", "deliver_policy": "last_per_subject"}},
		roles: []roles.Role{roles.Producer, roles.Worker}, control: roles.Tokens},
	{what: "write (replay) a sealed token record", subject: "$KV.relay_tokens.alerts", roles: []roles.Role{roles.Producer, roles.Worker}},
	{what: "read an account record (stream get)", subject: "$JS.API.STREAM.MSG.GET.KV_relay_accounts", body: map[string]any{"last_by_subj": "$KV.relay_accounts.alerts"},
		roles: []roles.Role{roles.Producer}},
	{what: "forge a token event", subject: "relay.events.token.stored", body: map[string]string{"account": "alerts"},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Admin}},
	{what: "rewrite an account record", subject: "$KV.relay_accounts.alerts", roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "read the mail queue with a consumer of its own", subject: "$JS.API.CONSUMER.CREATE.MAIL",
		body: map[string]any{"stream_name": "MAIL", "config": map[string]any{"ack_policy": "explicit"}}, roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "write a dead letter", subject: "mail.dlq.alerts", roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "queue mail", subject: "mail.send.alerts", roles: []roles.Role{roles.Tokens}},
	{what: "pose as the token service", subject: "token.get", sub: true, roles: []roles.Role{roles.Producer, roles.Worker, roles.Admin}},
	{what: "read every reply", subject: "_INBOX.>", sub: true, roles: roles.All},
	{what: "read the workers' replies (access tokens)", subject: "_INBOX_relay_workers.>", sub: true,
		roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}},
	{what: "read the admins' replies (dead letters, sealed records)", subject: "_INBOX_admin.>", sub: true,
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "read the token service's replies", subject: "_INBOX_relay_tokens.>", sub: true,
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Admin}},
	{what: "read token events", subject: "relay.events.>", sub: true, roles: []roles.Role{roles.Producer, roles.Admin}},
	// A producer stores large bodies but never reads, lists, purges or
	// deletes one (anyone's mail), nor learns a name (the metadata).
	{what: "read stored bodies with a consumer of its own", subject: "$JS.API.CONSUMER.CREATE.OBJ_relay_bodies",
		body:  map[string]any{"stream_name": "OBJ_relay_bodies", "config": map[string]any{"ack_policy": "none", "deliver_policy": "all"}},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "read a body's chunk by sequence (direct get)", subject: "$JS.API.DIRECT.GET.OBJ_relay_bodies", body: map[string]any{"seq": 1},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "read a body's chunks by subject (direct get)", subject: "$JS.API.DIRECT.GET.OBJ_relay_bodies.$O.relay_bodies.C.x", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "learn the newest stored body's name (a wildcard as a direct get's key)", subject: "$JS.API.DIRECT.GET.OBJ_relay_bodies.$O.relay_bodies.M.>", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Tokens}, control: roles.Worker},
	{what: "list stored bodies' names (a stream info with a subjects filter)", subject: "$JS.API.STREAM.INFO.OBJ_relay_bodies", body: map[string]any{"subjects_filter": ">"},
		roles: []roles.Role{roles.Producer, roles.Tokens}, control: roles.Worker},
	{what: "read a body's chunk (stream get)", subject: "$JS.API.STREAM.MSG.GET.OBJ_relay_bodies", body: map[string]any{"seq": 1},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "delete a stored body's chunk", subject: "$JS.API.STREAM.MSG.DELETE.OBJ_relay_bodies", body: map[string]any{"seq": 1},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "purge stored bodies", subject: "$JS.API.STREAM.PURGE.OBJ_relay_bodies", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	{what: "delete the body store", subject: "$JS.API.STREAM.DELETE.OBJ_relay_bodies", body: map[string]any{},
		roles: []roles.Role{roles.Producer, roles.Worker, roles.Tokens}},
	{what: "read dead letters", subject: "$JS.API.STREAM.MSG.GET.MAIL_DLQ", body: map[string]any{"seq": 1},
		roles: []roles.Role{roles.Producer, roles.Tokens}},
	// An account's size limit: producers ask relay serve's workers, who
	// alone may answer; nobody else needs it.
	{what: "ask an account's size limit", subject: "relay.v1.limits.alerts", roles: []roles.Role{roles.Tokens, roles.Admin}, control: roles.Producer},
	{what: "pose as the limits service", subject: "relay.v1.limits.alerts", sub: true, roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}},
	{what: "pose as the limits service to micro's discovery", subject: "$SRV.INFO.relay-limits", sub: true, roles: []roles.Role{roles.Producer, roles.Tokens, roles.Admin}},
	{what: "pose as the token service to micro's discovery", subject: "$SRV.INFO.relay-tokens", sub: true, roles: []roles.Role{roles.Producer, roles.Worker, roles.Admin}},
	{what: "ask the limits service about more than an alias", subject: "relay.v1.limits.alerts.mailbox", roles: []roles.Role{roles.Producer}},
	{what: "read an account record through the limits permission", subject: "$JS.API.DIRECT.GET.KV_relay_accounts.$KV.relay_accounts.alerts", body: map[string]any{},
		roles: []roles.Role{roles.Producer}, control: roles.Worker},
}

// tryLimitsReplies: a producer may ask the limits service, but it cannot
// make the service answer anywhere but an inbox: requests whose reply
// subjects are the JetStream API's deletion of MAIL, a dead-letter
// subject and the workers' inbox are not answered (the worker's
// allow_responses, or the relay's own connection on its embedded server,
// would publish there). The answer itself holds the alias and the limit
// only.
func tryLimitsReplies(t *testing.T, ctx context.Context, url string, opts map[roles.Role]queue.ConnectOptions, js jetstream.JetStream, alias string) {
	t.Helper()
	p := newProber(t, url, roles.Producer, opts[roles.Producer])
	// The workers' inbox: a worker listens where an answer would land
	// (nothing in a stream would show it).
	w := newProber(t, url, roles.Worker, opts[roles.Worker])
	stolen, err := w.nc.SubscribeSync(roles.Worker.InboxPrefix() + ".x.y")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	dlq, err := js.Stream(ctx, queue.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	before, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, reply := range []string{"$JS.API.STREAM.DELETE." + queue.StreamMail, "mail.dlq." + alias, roles.Worker.InboxPrefix() + ".x.y"} {
		if err := p.nc.PublishRequest(limits.Subject(alias), reply, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	// One worker answers in order: once a later request is answered, the
	// ones before it were handled.
	msg, err := p.nc.Request(limits.Subject(alias), nil, 10*time.Second)
	if err != nil {
		t.Fatalf("a producer asks the limits of %s: %v", alias, err)
	}
	var got map[string]any
	if err := json.Unmarshal(msg.Data, &got); err != nil || len(got) != 2 || got["account"] != alias || got["max_message_bytes"] == nil {
		t.Fatalf("limits answer %s (%v): want the alias and the limit only", msg.Data, err)
	}
	if _, err := js.Stream(ctx, queue.StreamMail); err != nil {
		t.Fatalf("MAIL after a limits request replying to its deletion: %v", err)
	}
	after, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.State.Msgs != before.State.Msgs {
		t.Fatalf("MAIL_DLQ holds %d messages, %d before a limits request replying to mail.dlq.%s", after.State.Msgs, before.State.Msgs, alias)
	}
	if m, err := stolen.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a limits request replying to the workers' inbox was answered there: %q", m.Data)
	}
}

// tryAttacks runs every attack as every role it names on the server at
// url and asserts each is refused by a permission; where a control role
// is named, the same request from it gets an answer.
func tryAttacks(t *testing.T, ctx context.Context, url string, opts map[roles.Role]queue.ConnectOptions) {
	t.Helper()
	probers := map[roles.Role]*prober{}
	for _, r := range roles.All {
		probers[r] = newProber(t, url, r, opts[r])
	}
	for _, a := range attacks {
		for _, r := range a.roles {
			p := probers[r]
			kind := "Publish"
			if a.sub {
				kind = "Subscription"
				if _, err := p.nc.SubscribeSync(a.subject); err != nil {
					t.Fatal(err)
				}
				_ = p.nc.Flush()
			} else {
				// Publish the request with a reply inbox of the role's
				// own and wait for whichever comes: the server's refusal,
				// or (the attack worked) an answer.
				inbox := p.nc.NewInbox()
				replies, err := p.nc.SubscribeSync(inbox)
				if err != nil {
					t.Fatal(err)
				}
				body := []byte(`{"alias":"alerts","smtp_addr":"evil.example:587"}`)
				if a.body != nil {
					body, _ = json.Marshal(a.body)
				}
				if err := p.nc.PublishRequest(a.subject, inbox, body); err != nil {
					t.Fatal(err)
				}
				_ = p.nc.Flush()
				testutil.Eventually(t, ctx, "an answer or a refusal for a "+string(r)+" to "+a.what, func() bool {
					if m, err := replies.NextMsg(0); err == nil {
						t.Errorf("a %s could %s (%s): answered %q", r, a.what, a.subject, m.Data)
						return true
					}
					return p.violated(kind, a.subject)
				})
				replies.Unsubscribe()
				continue
			}
			testutil.Eventually(t, ctx, "the server to refuse a "+string(r)+" to "+a.what, func() bool { return p.violated(kind, a.subject) })
		}
		if a.control != "" && !slices.Contains(a.roles, a.control) {
			body, _ := json.Marshal(a.body)
			if _, err := probers[a.control].nc.Request(a.subject, body, 5*time.Second); err != nil {
				t.Errorf("control: a %s may %s (%s) but got %v: the attack request is malformed", a.control, a.what, a.subject, err)
			}
			if a.subject == "$JS.API.STREAM.CREATE.STEAL" {
				_, _ = probers[a.control].nc.Request("$JS.API.STREAM.DELETE.STEAL", nil, 5*time.Second)
			}
		}
	}
}
