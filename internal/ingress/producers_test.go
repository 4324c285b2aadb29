package ingress_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"relay365/internal/ingress"
	"relay365/internal/queue/queuetest"
	"relay365/internal/roles"
)

func TestPasswordHash(t *testing.T) {
	h := ingress.HashPassword("a long enough password")
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") || strings.Contains(h, "a long enough password") {
		t.Fatalf("hash %q", h)
	}
	if h == ingress.HashPassword("a long enough password") {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	for pw, want := range map[string]bool{"a long enough password": true, "a long enough passwort": false, "": false} {
		if got := ingress.CheckPassword(h, pw); got != want {
			t.Errorf("CheckPassword(%q) = %v", pw, got)
		}
	}
	for _, bad := range []string{"", "$argon2id$v=19$m=1,t=1,p=1$$", "$bcrypt$x", "$argon2id$v=18$m=19456,t=2,p=1$AAAA$AAAA", "$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA"} {
		if ingress.CheckPassword(bad, "x") {
			t.Errorf("CheckPassword accepted hash %q", bad)
		}
	}
	if p := ingress.NewPassword(); len(p) != 32 || p == ingress.NewPassword() {
		t.Fatalf("NewPassword %q", p)
	}
	// Letters and digits only: never a leading "-" a command line reads
	// as an option, nothing a shell or YAML would interpret.
	for range 200 {
		if p := ingress.NewPassword(); strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			t.Fatalf("NewPassword %q has characters beyond A-Z and 2-7", p)
		}
	}
}

func TestProducerRegistry(t *testing.T) {
	f := startFrontDoor(t, nil)
	for name, tc := range map[string]struct {
		name     string
		accounts []string
		password string
		err      string
	}{
		"bad name":       {"Bad Name", []string{"alerts"}, "long enough password", "producer name"},
		"no accounts":    {"cron", nil, "long enough password", "at least one account"},
		"short password": {"cron", []string{"alerts"}, "short", "shorter than 12"},
		"bad account":    {"cron", []string{"A B"}, "long enough password", "not an account alias"},
	} {
		if _, err := f.prods.Put(f.ctx, tc.name, tc.accounts, tc.password); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", name, err, tc.err)
		}
	}
	list, err := f.prods.List(f.ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alertmanager" || list[1].Name != "ghost" {
		t.Fatalf("List = %+v %v", list, err)
	}
	// An account named twice is stored once, in the order first given.
	pr, err := f.prods.Put(f.ctx, "cron", []string{"b", "a", "b", "a", "c"}, "long enough password")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.prods.Get(f.ctx, "cron"); !slices.Equal(pr.Accounts, []string{"b", "a", "c"}) || !slices.Equal(got.Accounts, pr.Accounts) {
		t.Errorf("accounts b,a,b,a,c stored as %v (read back %v), want [b a c]", pr.Accounts, got.Accounts)
	}
	if err := f.prods.Remove(f.ctx, "cron"); err != nil {
		t.Fatal(err)
	}
	if err := f.prods.Remove(f.ctx, "nobody"); err == nil {
		t.Fatal("removing a producer that does not exist succeeded")
	}
}

// TestConcurrentAddsStoreOnePassword: runs of relay producer add for one
// name at the same moment each print the password they stored, so only
// one of them may store: the others fail, nothing printed. Each run reads
// the producer, spends an argon2id hash, then writes: the reads all come
// before any write, so without a compare-and-set every run "succeeds" and
// all but the last print a password that does not work.
func TestConcurrentAddsStoreOnePassword(t *testing.T) {
	f := startFrontDoor(t, nil)
	for _, existing := range []bool{false, true} {
		t.Run(fmt.Sprintf("existing=%v", existing), func(t *testing.T) {
			name := fmt.Sprintf("twice-%v", existing)
			if existing {
				if _, err := f.prods.Put(f.ctx, name, []string{"alerts"}, "the first password"); err != nil {
					t.Fatal(err)
				}
			}
			const runs = 3
			errs := make([]error, runs)
			var start, done sync.WaitGroup
			start.Add(1)
			for i := range runs {
				done.Add(1)
				go func() {
					defer done.Done()
					start.Wait()
					_, errs[i] = f.prods.Put(f.ctx, name, []string{"alerts"}, fmt.Sprintf("password number %d", i))
				}()
			}
			start.Done()
			done.Wait()
			var stored []int
			for i, err := range errs {
				switch {
				case err == nil:
					stored = append(stored, i)
				case !errors.Is(err, ingress.ErrProducerChanged):
					t.Fatalf("run %d: %v, want success or ErrProducerChanged", i, err)
				}
			}
			if len(stored) == 0 || len(stored) == runs {
				t.Fatalf("%d of %d runs stored their password, want at least one and not all (the others refused)", len(stored), runs)
			}
			pr, err := f.prods.Get(f.ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			works := 0
			for _, i := range stored {
				if ingress.CheckPassword(pr.Hash, fmt.Sprintf("password number %d", i)) {
					works++
				}
			}
			if works != 1 {
				t.Fatalf("the stored hash matches %d of the stored runs' passwords, want 1", works)
			}
		})
	}
}

// TestProducerIsReadFromTheStreamLeader: the front door reads a producer
// it has no copy of from relay_producers' stream leader, not by a direct
// get, which a replica restarted after an outage answers before it has
// caught up: a producer removed during the outage would log in again
// (docs/design.md §7.10). With the worker role's real permissions, less
// its direct gets of the bucket, Get still finds a producer, and not one
// removed.
func TestProducerIsReadFromTheStreamLeader(t *testing.T) {
	srv := queuetest.StartRolesWithoutDirectGet(t, "KV_"+ingress.ProducersBucket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, admin := srv.As(t, roles.Admin)
	ap, err := ingress.OpenProducers(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cron", "leaked"} {
		if _, err := ap.Put(ctx, name, []string{"alerts"}, "long enough password"); err != nil {
			t.Fatal(err)
		}
	}
	if err := ap.Remove(ctx, "leaked"); err != nil {
		t.Fatal(err)
	}

	_, js := srv.As(t, roles.Worker)
	wp, err := ingress.OpenProducers(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := wp.Get(ctx, "cron"); err != nil || p.Name != "cron" || !slices.Equal(p.Accounts, []string{"alerts"}) {
		t.Fatalf("Get(cron) = %+v, %v", p, err)
	}
	if p, err := wp.Get(ctx, "leaked"); !errors.Is(err, ingress.ErrNoProducer) {
		t.Fatalf("Get(leaked) after its removal = %+v, %v; want ErrNoProducer", p, err)
	}
}
