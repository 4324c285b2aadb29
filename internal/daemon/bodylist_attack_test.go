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
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// TestProducerCannotFindAndDeleteAnotherBody: SECURITY.md says a producer
// may store bodies but never read, list or delete one. Object names are
// random, so a producer that cannot learn another's name cannot touch
// it; this test tries to learn one the way the bus would let it: a direct
// get whose subject ends in a wildcard ("…M.>" is the key; nats-server
// answers the last metadata message of any name), or a stream info with
// a subjects filter (the metadata subjects are the names), then writes a
// deletion marker as that name's metadata (a publish on $O.relay_bodies.M.>,
// which storing needs) and checks that the body is still there for the
// worker. Against deploy/nats/auth.conf and the embedded server.
func TestProducerCannotFindAndDeleteAnotherBody(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, as, adminJS := setUpAsAdmin(t, ctx)
	_, vjs := queuetest.ConnectAs(t, url, "victim", as[roles.Producer])
	vstore := body.OpenStoreOnly(vjs)
	raw := []byte("Subject: someone else's\r\n\r\n" + strings.Repeat("a large body in the queue\r\n", 100))
	ref, err := vstore.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		t.Fatalf("a producer stores a body: %v", err)
	}

	p := newProber(t, url, roles.Producer, as[roles.Producer])
	// names reads the body names an answer gives away: a direct get's
	// metadata, or a stream info's metadata subjects.
	metaPrefix := "$O." + body.Bucket + ".M."
	fromMeta := func(data []byte) []string {
		var info jetstream.ObjectInfo
		if json.Unmarshal(data, &info) == nil && info.Name != "" {
			return []string{info.Name}
		}
		return nil
	}
	fromSubjects := func(data []byte) (names []string) {
		var info struct {
			State struct {
				Subjects map[string]uint64 `json:"subjects"`
			} `json:"state"`
		}
		_ = json.Unmarshal(data, &info)
		for subj := range info.State.Subjects {
			if name, err := base64.URLEncoding.DecodeString(strings.TrimPrefix(subj, metaPrefix)); strings.HasPrefix(subj, metaPrefix) && err == nil {
				names = append(names, string(name))
			}
		}
		return names
	}
	for _, probe := range []struct {
		subject string
		req     []byte
		names   func([]byte) []string
	}{
		{"$JS.API.DIRECT.GET." + body.StreamName + "." + metaPrefix + ">", nil, fromMeta},
		{"$JS.API.DIRECT.GET." + body.StreamName + "." + metaPrefix + "*", nil, fromMeta},
		// a stream info asked for the stream's subjects lists every
		// metadata subject, and a metadata subject is a body's name
		{"$JS.API.STREAM.INFO." + body.StreamName, []byte(`{"subjects_filter":">"}`), fromSubjects},
	} {
		m, err := p.nc.Request(probe.subject, probe.req, time.Second)
		if err == nil && m.Header.Get("Status") == "" {
			for _, name := range probe.names(m.Data) {
				t.Errorf("a producer learned a stored body's name (%s) from %s", name, probe.subject)
				// and, knowing it, deletes it as nats.go's Object Store does
				info := jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: name}, Bucket: body.Bucket, Deleted: true}
				data, _ := json.Marshal(&info)
				if err := p.nc.Publish(metaPrefix+base64.URLEncoding.EncodeToString([]byte(name)), data); err != nil {
					t.Fatal(err)
				}
				_ = p.nc.Flush()
			}
		} else if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrNoResponders) {
			t.Logf("%s: %v", probe.subject, err)
		}
		if !p.violated("Publish", probe.subject) {
			t.Errorf("the server did not refuse a producer's %s", probe.subject)
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
