//go:build crash

package daemon_test

// The token service's crash window (docs/design.md §9.4): `relay serve`,
// built with the crash points, kills itself with SIGKILL after the
// identity platform answered a refresh with a rotated refresh token and
// before the token service stored it. The store keeps the previous
// refresh token and the dead process's lease; the next relay waits for
// the lease to end and refreshes with the previous token, which Entra
// (and the fake, unless strict) still honours, so the account recovers
// without anyone signing in again.
//
//	go test -tags crash -run TestCrashToken -v ./internal/daemon

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/crashpoint"
	"relay365/internal/fakeo365"
	"relay365/internal/message"
	"relay365/internal/queue"
	"relay365/internal/testutil"
	"relay365/internal/token"
)

func TestCrashTokenAnsweredNotStored(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rig := startCrashRig(t, ctx, "tokens", "tokens@contoso.com", 1, "crashpoints")
	keys, err := token.LoadKeyring(rig.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, rig.env.JS, keys)
	if err != nil {
		t.Fatal(err)
	}
	record := func() token.Record {
		t.Helper()
		rec, _, err := store.Get(ctx, "tokens")
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	consented := record().RefreshToken

	// Office 365 refuses the consent's access token once (535 5.7.3): the
	// worker forces a refresh, and the relay dies with its answer.
	refused := &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	rig.fake.SetNextAuthReply(1, refused)
	b, _ := (&message.Message{ID: "token-crash-1", Account: "tokens", To: []string{"ops@fabrikam.com"}, Subject: "after the crash", Text: "x"}).Encode()
	if _, err := queue.Publish(ctx, rig.env.JS, "tokens", "token-crash-1", b); err != nil {
		t.Fatal(err)
	}
	// A margin of a minute: the proactive refresh of the hour-long token
	// stays out of the way, and the lease lives 20 s.
	rig.serveCrashing(crashpoint.TokenAnswered, "--refresh-margin", "1m")
	rig.waitKilled()
	if n := rig.fake.TokenCalls(fakeo365.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh requests before the crash, want 1", n)
	}
	rec := record()
	if rec.RefreshToken != consented || rec.LeaseOwner == "" {
		t.Fatalf("after the crash: refresh token kept %v, lease %q; want the previous refresh token and the dead process's lease", rec.RefreshToken == consented, rec.LeaseOwner)
	}

	// Refused once more after the restart: the forced refresh waits for
	// the dead lease, then spends the previous refresh token.
	rig.fake.SetNextAuthReply(1, refused)
	rig.serve("--refresh-margin", "1m")
	if _, err := rig.fake.WaitMessages(ctx, rig.base+1); err != nil {
		t.Fatalf("the message after the crash: %v", err)
	}
	testutil.Eventually(t, ctx, "MAIL to drain", rig.mailDrained)
	rig.stop()

	rec = record()
	if rec.State != token.StateHealthy || rec.RefreshToken == consented || rec.LeaseOwner != "" {
		t.Errorf("after the recovery: state %s, refresh token rotated %v, lease %q; want healthy, rotated, no lease", rec.State, rec.RefreshToken != consented, rec.LeaseOwner)
	}
	if n, reuses := rig.fake.TokenCalls(fakeo365.GrantRefreshToken), rig.fake.RefreshReuses(); n != 2 || reuses != 1 {
		t.Errorf("%d refresh requests, %d with a refresh token already spent; want 2 and 1 (the crash's answer was lost)", n, reuses)
	}
	if _, total := rig.delivered(); total != 1 {
		t.Errorf("%d messages delivered, want 1", total)
	}
}
