package token_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue/queuetest"
	"relay365/internal/token"
	"relay365/internal/token/tokentest"
)

func namedKey(t *testing.T, id string) token.NamedKey {
	t.Helper()
	k := make([]byte, token.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return token.NamedKey{ID: id, Key: k}
}

func ring(t *testing.T, keys ...token.NamedKey) *token.Keyring {
	t.Helper()
	kr, err := token.NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func record(acct string, n int) token.Record {
	return token.Record{
		Account: acct, RefreshToken: fmt.Sprintf("RT-SECRET-%s-%d", acct, n), AccessToken: fmt.Sprintf("AT-SECRET-%s-%d", acct, n),
		Expiry: time.Now().Add(time.Hour).UTC(), TokenURL: "https://login.microsoftonline.com/contoso/oauth2/v2.0/token",
		State: token.StateHealthy,
	}
}

// After a key change the token service's ordinary writes (a refresh's
// compare-and-set, a consent's put) re-seal a record under the new key;
// no earlier revision, sealed under the old key and holding a refresh
// token Microsoft has not revoked, may stay behind in the bucket's stream.
func TestWriteUnderNewKeyLeavesNoOldKeyRevision(t *testing.T) {
	ctx := ctxFor(t)
	js := queuetest.Start(t).JS
	oldKey, newKey := namedKey(t, "old"), namedKey(t, "new")
	before, err := token.OpenStore(ctx, js, ring(t, oldKey))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 { // refreshes under the old key
		for _, acct := range []string{"alerts", "billing"} {
			if _, err := before.Put(ctx, record(acct, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	after, err := token.OpenStore(ctx, js, ring(t, newKey, oldKey))
	if err != nil {
		t.Fatal(err)
	}
	rec, rev, err := after.Get(ctx, "alerts")
	if err != nil || rec.KeyID != "old" {
		t.Fatalf("old-key record: %v %v", rec, err)
	}
	if _, err := after.Update(ctx, rec, rev); err != nil { // a refresh's write
		t.Fatal(err)
	}
	if _, err := after.Put(ctx, record("billing", 9)); err != nil { // a consent's write
		t.Fatal(err)
	}
	left := tokentest.SealedValues(t, ctx, js)
	tokentest.NoneOpens(t, ring(t, oldKey), left)
	// What is left is the current record of each account, and it opens.
	if len(left) != 2 {
		t.Errorf("%d values left in the bucket's stream, want the 2 current records", len(left))
	}
	for _, acct := range []string{"alerts", "billing"} {
		if got, _, err := after.Get(ctx, acct); err != nil || got.KeyID != "new" {
			t.Errorf("%s: key %q, %v", acct, got.KeyID, err)
		}
	}
}

// A bucket made by an earlier version kept 5 revisions per account. The
// store brings it to one when it opens it, and the server drops the older
// revisions then, not only on each account's next write.
func TestOpenStoreTrimsAnOlderBucketsHistory(t *testing.T) {
	ctx := ctxFor(t)
	js := queuetest.Start(t).JS
	oldKey := namedKey(t, "old")
	oldRing := ring(t, oldKey)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: token.Bucket, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		for _, acct := range []string{"alerts", "billing"} {
			pt, _ := json.Marshal(record(acct, i))
			sealed, err := oldRing.Seal([]byte(token.Bucket+"/"+acct), pt)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, acct, sealed); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(tokentest.SealedValues(t, ctx, js)); n != 10 {
		t.Fatalf("the older bucket holds %d values, want 10", n)
	}
	s, err := token.OpenStore(ctx, js, ring(t, namedKey(t, "new"), oldKey))
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 {
		t.Errorf("bucket history %d after OpenStore, want 1", st.History())
	}
	left := tokentest.SealedValues(t, ctx, js)
	if len(left) != 2 {
		t.Errorf("%d values left in the bucket's stream, want the 2 current records", len(left))
	}
	for _, v := range left {
		if v.Seq < 9 {
			t.Errorf("revision %d of %s kept, want only the last of each account", v.Seq, v.Account)
		}
	}
	for _, acct := range []string{"alerts", "billing"} {
		if got, _, err := s.Get(ctx, acct); err != nil || got.RefreshToken != record(acct, 4).RefreshToken {
			t.Errorf("%s after trimming: %v %v", acct, got, err)
		}
	}
}
