package producer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"relay365/internal/queue"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
	"relay365/producer"
)

// A NATS user that may not publish on mail.send.<account> (here the
// token service's, connected by mistake; or a producer user limited to
// other accounts), or whose reply inbox the server refuses, gets no
// answer but an asynchronous -ERR. Publish, PublishBatch and a large
// message's body store end on that refusal with an error that says so
// (producer.ErrPermission, nats.ErrPermissionViolation), before their
// context ends: not a context.DeadlineExceeded that a caller takes for a
// relay that is down and retries forever.
func TestPublishRefusedByNATSPermissions(t *testing.T) {
	rs := queuetest.StartRoles(t)
	_, ajs := rs.As(t, roles.Admin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.EnsureStreams(ctx, ajs, queue.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	// Each case on a connection of its own: a refusal of one case's
	// publishes may come after that case has ended.
	as := func(r roles.Role, inbox string) func() *nats.Conn {
		return func() *nats.Conn {
			nc, err := queue.ConnectWith(rs.URL, "test-"+string(r), queue.ConnectOptions{NKeyFile: roles.SeedFile(rs.Dir, r), InboxPrefix: inbox}, quiet)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			return nc
		}
	}
	tokens := as(roles.Tokens, roles.Tokens.InboxPrefix())
	defaultInbox := as(roles.Producer, "")

	batch := make([]*producer.Message, 20) // atomic batches (queue.MinBatch)
	for i := range batch {
		batch[i] = alert(fmt.Sprintf("perm-batch-%d", i))
	}
	for _, c := range []struct {
		name    string
		connect func() *nats.Conn
		publish func(p *producer.Producer, ctx context.Context) error
		want    string
	}{
		{"Publish without mail.send", tokens, func(p *producer.Producer, ctx context.Context) error {
			_, err := p.Publish(ctx, alert("perm-1"))
			return err
		}, `Publish to "mail.send.alerts"`},
		{"PublishBatch without mail.send", tokens, func(p *producer.Producer, ctx context.Context) error {
			_, err := p.PublishBatch(ctx, batch)
			return err
		}, `Publish to "mail.send.alerts"`},
		{"a large body without relay_bodies", tokens, func(p *producer.Producer, ctx context.Context) error {
			_, err := p.Publish(ctx, largeAlert("perm-2"))
			return err
		}, `Publish to "$O.relay_bodies.`},
		{"the default _INBOX", defaultInbox, func(p *producer.Producer, ctx context.Context) error {
			_, err := p.Publish(ctx, alert("perm-3"))
			return err
		}, "nats.CustomInboxPrefix(producer.InboxPrefix)"},
	} {
		p, err := producer.New(c.connect())
		if err != nil {
			t.Fatal(err)
		}
		pctx, pcancel := context.WithTimeout(ctx, 15*time.Second)
		err = c.publish(p, pctx)
		ended := pctx.Err()
		pcancel()
		if !errors.Is(err, producer.ErrPermission) || !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s: %v (%s); want producer.ErrPermission and nats.ErrPermissionViolation", c.name, err, kind(err))
			continue
		}
		if ended != nil {
			t.Errorf("%s: returned only once its context had ended (%v): the refusal came long before", c.name, ended)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v also matches a context error: a caller would take it for a relay to wait for", c.name, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q does not say %s", c.name, err, c.want)
		}
	}
}
