//go:build linux

package relaycmd

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"relay365/internal/bench"
)

// TestSendmailSpoolAsAnotherUser: the spool the README has made with
// install -d -m 1733 keeps the mail of every user while NATS is
// unreachable, not only root's: cron runs sendmail as each crontab's
// owner, who may write into the spool but not read (list, open) it. The
// command runs as the user nobody, in a child process of this test
// binary (TestMain makes it the relay command line), since the test
// itself runs as root, which any directory's mode lets through.
func TestSendmailSpoolAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs sendmail as another user: needs root")
	}
	const nobody = 65534
	base := t.TempDir()
	// The test's own directories, 0700 as made: let nobody reach the
	// binary and the spool.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// And every directory above them: a temporary directory under a
	// home of mode 0700 is out of nobody's reach, whatever the test does.
	for d := filepath.Dir(filepath.Dir(base)); ; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by other users: nobody could not reach the spool", d)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(base, "relay")
	copyFile(t, self, exe, 0o755)
	spool := filepath.Join(base, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(spool, 0o733|os.ModeSticky); err != nil { // install -d -m 1733
		t.Fatal(err)
	}

	cmd := exec.Command(exe, "sendmail", "--timeout", "5s", "ops@contoso.com")
	cmd.Dir = base
	cmd.Env = []string{bench.ChildEnv + "=1", "RELAY_NATS_URL=" + natsDown, "RELAY_ACCOUNT=alerts", "RELAY_SENDMAIL_SPOOL=" + spool}
	cmd.Stdin = strings.NewReader("Subject: disk full\n\n/var is at 99%\n")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	err = cmd.Run()
	names := spoolNames(t, spool)
	if err != nil || len(names) != 1 || !strings.HasSuffix(names[0], spoolSuffix) {
		t.Fatalf("sendmail as uid %d, NATS down, spool of mode 1733: %v, output %q, spool holds %q; want exit 0 and the message kept", nobody, err, stderr.String(), names)
	}
	path := filepath.Join(spool, names[0])
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != nobody || st.Mode&0o777 != 0o600 {
		t.Fatalf("%s: owner %d, mode %o; want the sender's (%d), 0600", names[0], st.Uid, st.Mode&0o777, nobody)
	}
	if m, account, err := readSpool(path); err != nil || account != "alerts" || len(m.To) != 1 || m.To[0] != "ops@contoso.com" {
		t.Fatalf("%s: account %q, %v", names[0], account, err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
