package authcmd_test

import (
	"strings"
	"testing"

	"relay365/internal/cli"
	"relay365/internal/fakeo365"
)

// authtool test takes the relay's token path, and like a worker it sends
// a token only where the binding sealed at consent says: an account record
// rewritten to another SMTP server (and its CA) gets an error naming the
// fields, and that server no connection.
func TestTestCommandRefusesRewrittenAccount(t *testing.T) {
	w := newWorld(t, fakeo365.Config{DeviceApproveAfter: -1})
	w.connect("alerts", mailbox)
	attacker, err := fakeo365.Start(fakeo365.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { attacker.Close() })
	a, err := w.accounts.Get(testCtx(t), "alerts")
	if err != nil {
		t.Fatal(err)
	}
	a.SMTPAddr, a.CAFile = attacker.SMTPAddr(), attacker.CAFile()
	if err := w.accounts.Put(testCtx(t), a); err != nil {
		t.Fatal(err)
	}
	r := w.run(person{}, "test", "--account", "alerts")
	if n, rep := attacker.Connections(), attacker.Replies(); n != 0 {
		t.Fatalf("the rewritten endpoint got %d connections (replies %v)", n, rep)
	}
	if r.code != cli.ExitFail || !strings.Contains(r.stderr, "smtp_addr") || !strings.Contains(r.stderr, "ca_file") ||
		!strings.Contains(r.stderr, "does not match the binding sealed with its tokens") {
		t.Fatalf("test through a rewritten record: exit %d", r.code)
	}
}
