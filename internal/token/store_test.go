package token

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openTestStore(t *testing.T, js jetstream.JetStream, kr *Keyring) *Store {
	t.Helper()
	s, err := OpenStore(testCtx(t), js, kr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func secretRecord(acct string) Record {
	return Record{
		Account:      acct,
		RefreshToken: "RT-SECRET-refresh-0123456789",
		AccessToken:  "AT-SECRET-access-0123456789",
		ClientSecret: "CS-SECRET-client-0123456789",
		Expiry:       time.Now().Add(time.Hour).UTC(),
		Scopes:       []string{"https://outlook.office.com/SMTP.Send", "offline_access"},
		TokenURL:     "https://login.microsoftonline.com/contoso/oauth2/v2.0/token",
		State:        StateHealthy,
	}
}

func TestStoreRawBytesHoldNoPlaintext(t *testing.T) {
	ctx := testCtx(t)
	js := startJetStream(t)
	s := openTestStore(t, js, testKeyring(t, "k1"))
	rec := secretRecord("alerts")
	if _, err := s.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	raw, err := s.RawGet(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{rec.RefreshToken, rec.AccessToken, rec.ClientSecret, "SECRET", "refresh_token", "healthy", rec.TokenURL} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("raw KV value contains %q", plain)
		}
	}
	// Also through the bucket directly (not just our RawGet).
	kv, _ := js.KeyValue(ctx, Bucket)
	e, err := kv.Get(ctx, "alerts")
	if err != nil || !bytes.Equal(e.Value(), raw) {
		t.Fatalf("bucket value differs from RawGet: %v", err)
	}
	got, _, err := s.Get(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if got.RefreshToken != rec.RefreshToken || got.AccessToken != rec.AccessToken || got.ClientSecret != rec.ClientSecret || !got.Expiry.Equal(rec.Expiry) || got.KeyID != "k1" {
		t.Fatalf("round trip: %+v", got)
	}
	// fmt and zerolog never print the secrets of a Record.
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%d", "%q"} {
		if out := fmt.Sprintf(f, got); strings.Contains(out, "SECRET") {
			t.Errorf("%s prints a secret: %s", f, out)
		}
	}
	var buf bytes.Buffer
	zl := zerolog.New(&buf)
	zl.Info().Interface("rec", got).Object("obj", got).Msg("x")
	if strings.Contains(buf.String(), "SECRET") || !strings.Contains(buf.String(), `"account":"alerts"`) {
		t.Errorf("zerolog: %s", buf.String())
	}
}

func TestStoreGetMissing(t *testing.T) {
	ctx := testCtx(t)
	s := openTestStore(t, startJetStream(t), testKeyring(t, "k1"))
	if _, _, err := s.Get(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v", err)
	}
	if _, _, err := s.Get(ctx, "Bad.Alias"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get invalid alias: %v", err)
	}
	if _, err := s.Put(ctx, Record{Account: "a b"}); err == nil {
		t.Fatal("Put with invalid account accepted")
	}
}

func TestStoreUpdateConflict(t *testing.T) {
	ctx := testCtx(t)
	s := openTestStore(t, startJetStream(t), testKeyring(t, "k1"))
	rec := secretRecord("alerts")
	rev1, err := s.Put(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	got, rev, err := s.Get(ctx, "alerts")
	if err != nil || rev != rev1 {
		t.Fatalf("Get rev %d (%v), Put rev %d", rev, err, rev1)
	}
	got.FailCount = 1
	rev2, err := s.Update(ctx, got, rev)
	if err != nil || rev2 <= rev {
		t.Fatalf("Update at current rev: %d, %v", rev2, err)
	}
	got.FailCount = 2
	_, err = s.Update(ctx, got, rev) // stale
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("stale Update: %v, want ErrConflict", err)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("conflict error leaks: %v", err)
	}
	cur, _, _ := s.Get(ctx, "alerts")
	if cur.FailCount != 1 {
		t.Fatalf("stale Update was applied: fail_count %d", cur.FailCount)
	}
	// Update of a key that does not exist at a non-zero revision conflicts too.
	other := secretRecord("other")
	if _, err := s.Update(ctx, other, 99); !errors.Is(err, ErrConflict) {
		t.Fatalf("Update missing key: %v", err)
	}
}

func TestStoreValueMovedToOtherAccountFails(t *testing.T) {
	ctx := testCtx(t)
	js := startJetStream(t)
	s := openTestStore(t, js, testKeyring(t, "k1"))
	if _, err := s.Put(ctx, secretRecord("alerts")); err != nil {
		t.Fatal(err)
	}
	raw, err := s.RawGet(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	if _, err := kv.Put(ctx, "billing", raw); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Get(ctx, "billing")
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("moved value: %v, want ErrOpen", err)
	}
	if want := "cannot open sealed record for account billing: wrong key or record moved/tampered"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q lacks %q", err, want)
	}
	// Tampered value.
	raw[len(raw)-3] ^= 0xff
	if _, err := kv.Put(ctx, "alerts", raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "alerts"); !errors.Is(err, ErrOpen) {
		t.Fatalf("tampered value: %v", err)
	}
}

func TestStoreOldKeyOpensAndIsResealed(t *testing.T) {
	ctx := testCtx(t)
	js := startJetStream(t)
	oldKey := NamedKey{ID: "old", Key: randKey(t)}
	newKey := NamedKey{ID: "new", Key: randKey(t)}
	ring1, _ := NewKeyring(oldKey)
	s1 := openTestStore(t, js, ring1)
	rec := secretRecord("alerts")
	if _, err := s1.Put(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Put(ctx, secretRecord("billing")); err != nil {
		t.Fatal(err)
	}

	// Rotation: new key first, old kept.
	ring2, _ := NewKeyring(newKey, oldKey)
	s2 := openTestStore(t, js, ring2)
	got, rev, err := s2.Get(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID != "old" || !s2.NeedsReseal(got.KeyID) || got.RefreshToken != rec.RefreshToken {
		t.Fatalf("old-key record: key=%q needsReseal=%v", got.KeyID, s2.NeedsReseal(got.KeyID))
	}
	got.FailCount = 3
	if _, err := s2.Update(ctx, got, rev); err != nil {
		t.Fatal(err)
	}
	raw, _ := s2.RawGet(ctx, "alerts")
	if id, _ := SealedKeyID(raw); id != "new" {
		t.Fatalf("after write sealed with %q, want new", id)
	}
	again, _, err := s2.Get(ctx, "alerts")
	if err != nil || again.KeyID != "new" || s2.NeedsReseal(again.KeyID) || again.FailCount != 3 {
		t.Fatalf("re-read: %v %v", again, err)
	}
	// Reseal helper for the rest.
	if done, err := s2.Reseal(ctx, "billing"); err != nil || !done {
		t.Fatalf("Reseal: %v %v", done, err)
	}
	if done, err := s2.Reseal(ctx, "billing"); err != nil || done {
		t.Fatalf("second Reseal: %v %v", done, err)
	}

	// A process that only has the new key cannot open an old-key record,
	// and says which key is missing.
	if _, err := s1.Put(ctx, secretRecord("legacy")); err != nil {
		t.Fatal(err)
	}
	ring3, _ := NewKeyring(newKey)
	s3 := openTestStore(t, js, ring3)
	_, _, err = s3.Get(ctx, "legacy")
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `sealed with key "old" which is not in the key file`) {
		t.Fatalf("missing old key: %v", err)
	}
}

func TestStoreDeletePurgesHistory(t *testing.T) {
	ctx := testCtx(t)
	js := startJetStream(t)
	s := openTestStore(t, js, testKeyring(t, "k1"))
	for i := 0; i < 3; i++ {
		if _, err := s.Put(ctx, secretRecord("alerts")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "alerts"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "alerts"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	hist, err := kv.History(ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range hist {
		if e.Operation() == jetstream.KeyValuePut {
			t.Fatalf("sealed value left in history at revision %d", e.Revision())
		}
	}
	if err := s.Delete(ctx, "never"); err != nil {
		t.Fatalf("Delete missing: %v", err)
	}
}

func TestStoreWaitChange(t *testing.T) {
	ctx := testCtx(t)
	s := openTestStore(t, startJetStream(t), testKeyring(t, "k1"))
	rec := secretRecord("alerts")
	rev, err := s.Put(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	type res struct {
		rec Record
		rev uint64
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, v, err := s.WaitChange(ctx, "alerts", rev)
		ch <- res{r, v, err}
	}()
	rec.FailCount = 7
	rev2, err := s.Update(ctx, rec, rev)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil || r.rev != rev2 || r.rec.FailCount != 7 {
		t.Fatalf("WaitChange = rev %d fail %d err %v; want rev %d", r.rev, r.rec.FailCount, r.err, rev2)
	}
	// Already newer: returns at once.
	if _, v, err := s.WaitChange(ctx, "alerts", rev); err != nil || v != rev2 {
		t.Fatalf("WaitChange on newer record: %d %v", v, err)
	}
	// Cancelled context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.WaitChange(cctx, "alerts", rev2); err == nil {
		t.Fatal("WaitChange ignored cancellation")
	}
}
