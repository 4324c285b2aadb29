package tokensvc

import (
	"strings"
	"testing"

	"relay365/internal/token"
)

// The upgrade: records stored by an earlier version have no binding. A
// token service binds each to the account record as it finds it when it
// starts (trust on first use), without waiting for mail or a refresh, and
// logs it; the tokens are kept, nobody signs in again.
func TestReplicaBindsRecordsOfAnEarlierVersionAtStart(t *testing.T) {
	e := newEnv(t)
	e.consent("legacy")
	rec := e.record("legacy")
	rec.Binding = token.Binding{}
	if _, err := e.store.Put(e.ctx, rec); err != nil { // as an earlier version stored it
		t.Fatal(err)
	}
	a, err := e.reg.Get(e.ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}

	e.replica("r1")
	e.eventually("the record bound", func() bool { return e.record("legacy").Binding.Bound() })
	got := e.record("legacy")
	if got.Binding != token.BindingOf(a) || got.RefreshToken != rec.RefreshToken || got.AccessToken != rec.AccessToken || !got.LastRefresh.Equal(rec.LastRefresh) {
		t.Fatalf("bound record %v, binding %+v: want the account's binding and the tokens kept", got, got.Binding)
	}
	if !strings.Contains(e.logs.String(), "trust on first use") {
		t.Errorf("the binding was not logged:\n%s", e.logs.String())
	}
}
