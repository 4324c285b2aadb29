package ingress_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-sasl"

	"relay365/internal/token/tokentest"
)

// TestLongEHLONameKeepsTheReceivedFieldShort: a domain is at most 255
// octets (RFC 5321 §4.5.3.1.2), and the Received field the front door
// writes is held to MaxReceivedHeader. An EHLO argument of 1,500 letters
// went whole into the Received field's FROM clause, a line longer than
// 998 with nowhere to fold it (RFC 5322 §2.1.1), so every message of the
// session was refused "554 5.6.0 ... the Received field has a line
// longer than 998 octets", a field the client never wrote.
func TestLongEHLONameKeepsTheReceivedFieldShort(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.dial("")
	if err := c.Hello(strings.Repeat("a", 1500)); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alertmanager", alertsPassword)); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "", []string{"ops@contoso.com"}, alertmanagerMail); err != nil {
		t.Fatalf("DATA after a long EHLO name: %v", err)
	}
	raw := string(f.onlyQueued().Raw)
	received := raw[:strings.Index(raw, alertmanagerMail)]
	if len(received) > 1024 || !strings.HasPrefix(received, "Received: from "+strings.Repeat("a", 255)+" ([127.0.0.1])\r\n") {
		t.Fatalf("Received field of %d octets:\n%.400s", len(received), received)
	}
}

// TestLongAUTHNameCostsLittle: the name of an AUTH is the client's, up to
// a command line of 64 KiB. One that cannot be a producer's is logged
// shortened and counted under one key, so a guesser with long names
// costs neither a log line nor lockout memory of their size (the
// lockout keeps up to 10,000 keys: of 30 KB names, 300 MB).
func TestLongAUTHNameCostsLittle(t *testing.T) {
	f := startFrontDoor(t, nil)
	for i := range 3 {
		name := strings.Repeat(string(rune('x'+i)), 30000)
		c := f.dial("")
		err := c.Auth(sasl.NewPlainClient("", name, "guess"))
		wantReply(t, "AUTH with a 30,000 octet name", err, 535, "5.7.8")
		c.Close()
	}
	for _, line := range strings.Split(f.logs.String(), "\n") {
		if len(line) > 2000 {
			t.Fatalf("a log line of %d octets: %.200s…", len(line), line)
		}
	}
	if n := f.srv.LockoutKeyBytes(); n > 200 {
		t.Fatalf("the lockout keeps %d octets of keys for 3 failed logins", n)
	}
}

// TestLockedOutAUTHLinesAreBounded: AUTH during a lockout is refused
// without a hash, so as fast as a client sends it; each refusal wrote a
// log line. They are counted (relay_ingress_auth_failures_total
// {reason="locked_out"}) and logged at most once per interval.
func TestLockedOutAUTHLinesAreBounded(t *testing.T) {
	f := startFrontDoor(t, nil)
	// A connection for each: go-smtp's client answers a failed AUTH with
	// a "*", which the server counts as a protocol error.
	auth := func() error {
		c := f.dial("")
		defer c.Close()
		return c.Auth(sasl.NewPlainClient("", "alertmanager", "wrong"))
	}
	for range 3 {
		wantReply(t, "AUTH with a wrong password", auth(), 535, "5.7.8")
	}
	for range 20 {
		wantReply(t, "AUTH during the lockout", auth(), 454, "4.7.0")
	}
	if n := strings.Count(f.logs.String(), "SMTP AUTH refused: too many failures"); n != 1 {
		t.Fatalf("%d log lines for 20 AUTH refused within one interval, want 1", n)
	}
	if n := tokentest.Metric(t, f.reg, "relay_ingress_auth_failures_total", map[string]string{"reason": "locked_out"}); n != 20 {
		t.Fatalf("relay_ingress_auth_failures_total{reason=locked_out} = %v, want 20", n)
	}
}
