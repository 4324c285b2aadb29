package daemon_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/roles"
)

// TestProducerCannotFindAndDeleteAnotherBody: SECURITY.md says a producer
// may store bodies but never read, list or delete one. Object names are
// random, so a producer that cannot learn another's name cannot touch
// it; this test tries to learn one the way the bus would let it: a direct
// get whose subject ends in a wildcard ("…M.>" is the key; nats-server
// answers the last metadata message of any name), then writes a
// deletion marker as that name's metadata (a publish on $O.relay_bodies.M.>,
// which storing needs) and checks that the body is still there for the
// worker. Against deploy/nats/auth.conf and the embedded server.
func TestProducerCannotFindAndDeleteAnotherBody(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	victim, err := queue.ConnectWith(url, "victim", as[roles.Producer])
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	vjs, _ := jetstream.New(victim)
	vstore, err := body.OpenStoreOnly(ctx, vjs)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte("Subject: someone else's\r\n\r\n" + strings.Repeat("a large body in the queue\r\n", 100))
	ref, err := vstore.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatalf("a producer stores a body: %v", err)
	}

	p := newProber(t, url, roles.Producer, as[roles.Producer])
	for _, subject := range []string{
		"$JS.API.DIRECT.GET." + body.StreamName + ".$O." + body.Bucket + ".M.>",
		"$JS.API.DIRECT.GET." + body.StreamName + ".$O." + body.Bucket + ".M.*",
	} {
		m, err := p.nc.Request(subject, nil, time.Second)
		if err == nil && m.Header.Get("Status") == "" {
			var info jetstream.ObjectInfo
			if json.Unmarshal(m.Data, &info) == nil && info.Name != "" {
				t.Errorf("a producer learned a stored body's name (%s) from a direct get on %s", info.Name, subject)
				// and, knowing it, deletes it as nats.go's Object Store does
				info.Deleted, info.Size, info.Chunks, info.Digest = true, 0, 0, ""
				data, _ := json.Marshal(&info)
				mark := base64.URLEncoding.EncodeToString([]byte(info.Name))
				if err := p.nc.Publish("$O."+body.Bucket+".M."+mark, data); err != nil {
					t.Fatal(err)
				}
				_ = p.nc.Flush()
			}
		} else if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrNoResponders) {
			t.Logf("%s: %v", subject, err)
		}
		if !p.violated("Publish", subject) {
			t.Errorf("the server did not refuse a producer's direct get on %s", subject)
		}
	}
	admin, err := body.Open(ctx, adminJS)
	if err != nil {
		t.Fatal(err)
	}
	r, err := admin.Open(ctx, ref)
	if err != nil {
		t.Fatalf("the worker cannot read the body a producer stored after another producer's attack: %v", err)
	}
	r.Close()
}
