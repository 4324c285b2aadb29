package roles

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/ingress"
	"relay365/internal/limits"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/token"
	"relay365/internal/token/tokensvc"
)

func TestNamesAreTheirPackages(t *testing.T) {
	for have, want := range map[string]string{
		streamMail: queue.StreamMail, streamDLQ: queue.StreamDLQ,
		bucketAccounts: account.Bucket, bucketTokens: token.Bucket, bucketSent: relay.SentBucket,
		bucketPacing: pacing.Bucket, bucketProducers: ingress.ProducersBucket,
		bucketBodies: body.Bucket, streamBodies: body.StreamName,
		limitsRequests: limits.SubjectPrefix + ".*", limitsService: limits.ServiceName,
		tokensService: tokensvc.ServiceName,
	} {
		if have != want {
			t.Errorf("roles grants %q, the package names it %q", have, want)
		}
	}
}

// TestAuthConfIsTheseRoles: deploy/nats/auth.conf, parsed by nats-server,
// gives each user exactly the allow lists and reply rules of its role, so
// an external server enforces what the embedded one does (and SECURITY.md's
// table, which these lists are, holds for both).
func TestAuthConfIsTheseRoles(t *testing.T) {
	for _, r := range All {
		t.Setenv("RELAY_"+strings.ToUpper(string(r))+"_PASSWORD", "pw")
	}
	t.Setenv("RELAY_WORKER_PASSWORD", "pw")
	opts, err := server.ProcessConfigFile("../../deploy/nats/auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	if len(users) != len(All) {
		t.Fatalf("auth.conf has %d users, want one per role (%d)", len(users), len(All))
	}
	for _, r := range All {
		u := users[r.User()]
		if u == nil {
			t.Fatalf("auth.conf has no user %s for role %s", r.User(), r)
		}
		want, got := r.Permissions(), u.Permissions
		same := func(what string, a, b *server.SubjectPermission) {
			var aa, bb []string
			if a != nil {
				aa, bb = slices.Sorted(slices.Values(a.Allow)), nil
				if len(a.Deny) > 0 {
					t.Errorf("%s %s: roles has deny entries; auth.conf must mirror them", r, what)
				}
			}
			if b != nil {
				bb = slices.Sorted(slices.Values(b.Allow))
				if len(b.Deny) > 0 {
					t.Errorf("%s %s: auth.conf denies %v; the roles are allow lists", r, what, b.Deny)
				}
			}
			if !slices.Equal(aa, bb) {
				t.Errorf("%s %s:\n auth.conf %v\n roles     %v", r, what, bb, aa)
			}
		}
		same("publish", want.Publish, got.Publish)
		same("subscribe", want.Subscribe, got.Subscribe)
		if (want.Response == nil) != (got.Response == nil) ||
			want.Response != nil && (*want.Response != *got.Response) {
			t.Errorf("%s allow_responses: auth.conf %+v, roles %+v", r, got.Response, want.Response)
		}
	}
}

func TestSeeds(t *testing.T) {
	dir := t.TempDir()
	users, err := EnsureSeeds(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != len(All) {
		t.Fatalf("%d users", len(users))
	}
	st, err := os.Stat(filepath.Join(dir, "nkeys"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("nkeys folder %v %v, want mode 0700", st.Mode(), err)
	}
	for i, r := range All {
		st, err := os.Stat(SeedFile(dir, r))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s seed: %v %v, want mode 0600", r, st.Mode(), err)
		}
		if users[i].Permissions == nil || !strings.HasPrefix(users[i].Nkey, "U") {
			t.Fatalf("%s user %+v", r, users[i])
		}
	}
	again, err := EnsureSeeds(dir)
	if err != nil || again[0].Nkey != users[0].Nkey {
		t.Fatalf("a second start made new seeds: %v", err)
	}
	if err := os.WriteFile(SeedFile(dir, Admin), []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureSeeds(dir); err == nil || strings.Contains(err.Error(), "not a seed") == false && !strings.Contains(err.Error(), "admin.nk") {
		t.Fatalf("a broken seed file: %v", err)
	}
}

func TestDefault(t *testing.T) {
	dir := t.TempDir()
	var o queue.ConnectOptions
	Default(&o, dir, Producer)
	if o.NKeyFile != "" || o.InboxPrefix != "_INBOX_producer" {
		t.Fatalf("without seeds: %+v", o)
	}
	if _, err := EnsureSeeds(dir); err != nil {
		t.Fatal(err)
	}
	o = queue.ConnectOptions{}
	Default(&o, dir, Admin)
	if o.NKeyFile != SeedFile(dir, Admin) || o.InboxPrefix != "_INBOX_admin" {
		t.Fatalf("with seeds: %+v", o)
	}
	o = queue.ConnectOptions{CredsFile: "x.creds", InboxPrefix: "_MINE"}
	Default(&o, dir, Admin)
	if o.NKeyFile != "" || o.InboxPrefix != "_MINE" {
		t.Fatalf("named credentials are overridden: %+v", o)
	}
}
