package consent_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/queue/queuetest"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// If the account cannot be written after the tokens were, the tokens are
// taken out again: nothing is left half-stored.
func TestEnrollRollsBackTokensWhenAccountWriteFails(t *testing.T) {
	ctx := testCtx(t)
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	q := queuetest.Start(t)
	reg, err := account.OpenRegistry(ctx, q.JS)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.NewKeyring(token.NamedKey{ID: "k1", Key: make([]byte, token.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	store, err := token.OpenStore(ctx, q.JS, keys)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := device(f).Run(ctx, func(consent.DeviceCode) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	// The account bucket disappears between the test mail and the write.
	if err := q.JS.DeleteKeyValue(ctx, account.Bucket); err != nil {
		t.Fatal(err)
	}
	acct := account.Account{Alias: "alerts", Mailbox: mailbox, Tenant: tenant, ClientID: clientID,
		Authority: f.AuthorityURL(), SMTPAddr: f.SMTPAddr(), CAFile: f.CAFile()}
	en := consent.Enroller{Accounts: reg, Store: store, Transport: &submit.Transport{CommandTimeout: 10 * time.Second}}
	err = en.Enroll(ctx, acct, tok, "", "")
	if err == nil || !strings.Contains(err.Error(), "its tokens were removed again") {
		t.Fatalf("Enroll = %v, want the failed account write reported with the rollback", err)
	}
	if len(f.Messages()) != 1 {
		t.Fatal("the test mail did not go first")
	}
	if _, err := store.RawGet(ctx, "alerts"); !errors.Is(err, token.ErrNotFound) {
		t.Fatalf("tokens left behind: %v", err)
	}
}
