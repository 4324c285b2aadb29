package account

import (
	"context"
	"errors"
	"testing"
	"time"

	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

// TestGetReadsTheStreamLeader: Get asks relay_accounts' stream leader,
// not a direct get, which a replica restarted after an outage answers
// before it has caught up: an account registered meanwhile read as not
// registered, and a sweeper could dead-letter its mail (docs/design.md
// §7.10). As the worker and token roles, with their real permissions less
// their direct gets of the bucket.
func TestGetReadsTheStreamLeader(t *testing.T) {
	srv := queuetest.StartRolesWithoutDirectGet(t, "KV_"+Bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, admin := srv.As(t, roles.Admin)
	ar, err := OpenRegistry(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	a := validAccount()
	if err := ar.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	for _, r := range []roles.Role{roles.Worker, roles.Tokens} {
		_, js := srv.As(t, r)
		reg, err := OpenRegistry(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := reg.Get(ctx, "alerts"); err != nil || got.Mailbox != a.Mailbox {
			t.Fatalf("%s: Get(alerts) = %+v, %v", r, got, err)
		}
		if _, err := reg.Get(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: Get(nobody) = %v, want ErrNotFound", r, err)
		}
	}
}
