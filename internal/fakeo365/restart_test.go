package fakeo365

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestRestartKeepsItsPorts: a fake started again in the same Dir listens
// where the last one did, so what a restarted sandbox stored (its
// accounts name the token endpoint and the SMTP server) works at once; a
// port taken meanwhile gives way to a free one, and a tampered address
// file is not followed off loopback.
func TestRestartKeepsItsPorts(t *testing.T) {
	dir := t.TempDir()
	start := func() *Server {
		t.Helper()
		s, err := Start(Config{Dir: dir})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		return s
	}
	first := start()
	smtpAddr, authority := first.SMTPAddr(), first.AuthorityURL()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again := start()
	if again.SMTPAddr() != smtpAddr || again.AuthorityURL() != authority {
		t.Errorf("restarted at %s and %s, want %s and %s", again.SMTPAddr(), again.AuthorityURL(), smtpAddr, authority)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}

	// The SMTP port taken by someone else: a free one, written down.
	hold, err := net.Listen("tcp", smtpAddr)
	if err != nil {
		t.Skipf("the port was taken before the test could hold it: %v", err)
	}
	defer hold.Close()
	moved := start()
	if moved.SMTPAddr() == smtpAddr {
		t.Fatalf("listening at %s, which is held", smtpAddr)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "smtp.addr")); err != nil || string(b) != moved.SMTPAddr()+"\n" {
		t.Fatalf("smtp.addr holds %q (%v), want %s", b, err, moved.SMTPAddr())
	}
	if err := moved.Close(); err != nil {
		t.Fatal(err)
	}

	// Not loopback: ignored.
	if err := os.WriteFile(filepath.Join(dir, "smtp.addr"), []byte("0.0.0.0:2526\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := start()
	defer s.Close()
	if host, _, _ := net.SplitHostPort(s.SMTPAddr()); host != "127.0.0.1" {
		t.Fatalf("listening at %s, want 127.0.0.1", s.SMTPAddr())
	}
}
