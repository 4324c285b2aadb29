// Package tokentest helps tests prove that no token, client secret or
// sealing key escapes: Secrets watches a token store for the whole test and
// remembers every secret that was ever stored, and Check scans any text a
// person or system could see (logs, events, /status, /metrics, replies).
package tokentest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"relay365/internal/testutil"
	"relay365/internal/token"
)

// Secrets is the set of secrets seen during a test.
type Secrets struct {
	mu  sync.Mutex
	set map[string]string // secret → what it is
}

// Watch collects every access token, refresh token, client secret and
// proxy password written to store until the test ends.
func Watch(t testing.TB, store *token.Store) *Secrets {
	t.Helper()
	s := &Secrets{set: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	updates, err := store.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for u := range updates {
			if u.Deleted || u.Err != nil {
				continue
			}
			s.Add("access token of "+u.Account, u.Record.AccessToken)
			s.Add("refresh token of "+u.Account, u.Record.RefreshToken)
			s.Add("client secret of "+u.Account, u.Record.ClientSecret)
			s.AddProxy("proxy of "+u.Account, u.Record.ProxyURL)
		}
	}()
	return s
}

// Add remembers one secret ("" is ignored).
func (s *Secrets) Add(what, secret string) {
	if secret == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set[secret] = what
}

// AddProxy remembers the password of a proxy URL (and the user and
// password together as they appear in it); a URL without one adds nothing.
func (s *Secrets) AddProxy(what, proxyURL string) {
	u, err := url.Parse(proxyURL)
	if err != nil || u.User == nil {
		return
	}
	if pw, ok := u.User.Password(); ok {
		s.Add("password of the "+what, pw)
		s.Add("credentials of the "+what, u.User.String())
	}
}

// AddKeyFile remembers the keys of a RELAY_TOKEN_KEY_FILE, as written and
// as raw bytes.
func (s *Secrets) AddKeyFile(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		_, k, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		s.Add("sealing key (base64)", k)
		if raw, err := base64.StdEncoding.DecodeString(k); err == nil {
			s.Add("sealing key (raw)", string(raw))
		}
	}
}

// Len is the number of secrets remembered.
func (s *Secrets) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set)
}

// Check fails the test if text contains any remembered secret.
func (s *Secrets) Check(t testing.TB, surface string, text []byte) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for secret, what := range s.set {
		if bytes.Contains(text, []byte(secret)) {
			t.Errorf("%s contains the %s", surface, what)
		}
	}
}

// Buffer collects logs or events written from many goroutines.
type Buffer = testutil.Buffer

// Metric returns the value of the series name{labels} (a gauge or a
// counter; labels not given match anything), or -1 when there is none.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if labelValue(m, k) != v {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Sealed is one value still held by the relay_tokens bucket's stream: a
// current record or an older revision of one.
type Sealed struct {
	Account string
	Seq     uint64 // the stream sequence, which is the KV revision
	Value   []byte
}

// SealedValues reads every message left in the bucket's stream
// (KV_relay_tokens), sequence by sequence, and returns those holding a
// value: what a holder of a retired key could still read through the
// JetStream API, whatever the KV layer shows as current. Delete and purge
// markers are left out.
func SealedValues(t testing.TB, ctx context.Context, js jetstream.JetStream) []Sealed {
	t.Helper()
	s, err := js.Stream(ctx, "KV_"+token.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []Sealed
	if info.State.Msgs == 0 {
		return out
	}
	prefix := "$KV." + token.Bucket + "."
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // removed: a gap in the sequence
		}
		if err != nil {
			t.Fatal(err)
		}
		if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			continue
		}
		out = append(out, Sealed{Account: strings.TrimPrefix(m.Subject, prefix), Seq: m.Sequence, Value: m.Data})
	}
	return out
}

// NoneOpens fails the test for every value in vals that keys can open: a
// revision readable under a retired key.
func NoneOpens(t testing.TB, keys *token.Keyring, vals []Sealed) {
	t.Helper()
	for _, v := range vals {
		if _, id, err := keys.Open([]byte(token.Bucket+"/"+v.Account), v.Value); err == nil {
			t.Errorf("revision %d of account %s still opens with key %s", v.Seq, v.Account, id)
		}
	}
}
