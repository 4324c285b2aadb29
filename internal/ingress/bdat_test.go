package ingress_test

import (
	"fmt"
	"strings"
	"testing"

	rtestutil "relay365/internal/testutil"
)

// TestBDATAfterAnAbortedOneGetsItsOwnReply: RFC 3030 §2 lets RSET end a
// transaction between BDAT chunks, and the client may start the next one
// at once (pipelined, RFC 2920). The aborted transaction's Data is still
// winding up (a large message: its partial body being removed) when the
// next BDAT starts, and go-smtp's BDAT goroutine hands its result to
// whichever transaction is current when it ends: the next one's BDAT
// LAST was answered with the aborted one's error, 554 5.0.0 "message
// transmission aborted", permanent, and the next message, valid, was
// never queued. Reset now waits for the aborted Data to end.
func TestBDATAfterAnAbortedOneGetsItsOwnReply(t *testing.T) {
	f := startFrontDoor(t, nil)
	tc, _ := rawLogin(t, f)
	// Past the session's buffer, so the aborted Data is streaming into
	// the body store when RSET comes.
	big := "To: ops@contoso.com\r\nSubject: big\r\n\r\n" + strings.Repeat(strings.Repeat("z", 76)+"\r\n", 6000)
	small := "To: ops@contoso.com\r\nSubject: small\r\n\r\nkept\r\n"
	for i := range 3 {
		fmt.Fprintf(tc.W, "MAIL FROM:<>\r\nRCPT TO:<ops@contoso.com>\r\nBDAT %d\r\n%s", len(big), big)
		if err := tc.W.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, code := range []int{250, 250, 250} {
			if _, msg, err := tc.ReadResponse(code); err != nil {
				t.Fatalf("round %d, the first transaction: %v %s", i, err, msg)
			}
		}
		// RSET and the next transaction, pipelined, its first chunk
		// not the last.
		fmt.Fprintf(tc.W, "RSET\r\nMAIL FROM:<>\r\nRCPT TO:<ops@contoso.com>\r\nBDAT %d\r\n%s", len(small), small)
		if err := tc.W.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"RSET", "MAIL", "RCPT", "BDAT"} {
			if code, msg, err := tc.ReadResponse(250); err != nil {
				t.Fatalf("round %d, %s after an aborted BDAT: %d %s (%v), want 250", i, cmd, code, msg, err)
			}
		}
		// The aborted transaction's Data has ended (it logs that).
		rtestutil.Eventually(t, f.ctx, "the aborted Data to end", func() bool {
			return strings.Count(f.logs.String(), "DATA ended early") == i+1
		})
		fmt.Fprintf(tc.W, "BDAT 0 LAST\r\n")
		if err := tc.W.Flush(); err != nil {
			t.Fatal(err)
		}
		if code, msg, err := tc.ReadResponse(250); err != nil {
			t.Fatalf("round %d, BDAT LAST after an aborted BDAT: %d %s (%v), want 250", i, code, msg, err)
		}
	}
	if n := len(f.queued()); n != 3 {
		t.Fatalf("%d queued, want the 3 small messages", n)
	}
}

// TestEmptyMessageIsSaidToBeEmpty: an empty DATA, or BDAT 0 LAST as the
// only chunk, got "554 5.6.0 Message cannot be parsed: EOF" (net/mail's
// error), which told the producer nothing; it is still 554 5.6.0 (RFC
// 5321 §4.2.3, RFC 3463 §3.7), saying the message is empty.
func TestEmptyMessageIsSaidToBeEmpty(t *testing.T) {
	f := startFrontDoor(t, nil)
	const want = "The message is empty: it needs at least a header section"
	// A raw client: go-smtp's own client writes "\r\n.\r\n" for an
	// empty DATA, a message with an empty header section.
	for _, tr := range []struct{ name, cmds string }{
		{"DATA", "DATA\r\n.\r\n"},
		{"BDAT 0 LAST", "BDAT 0 LAST\r\n"},
	} {
		t.Run(tr.name, func(t *testing.T) {
			tc, _ := rawLogin(t, f)
			fmt.Fprintf(tc.W, "MAIL FROM:<>\r\nRCPT TO:<ops@contoso.com>\r\n%s", tr.cmds)
			if err := tc.W.Flush(); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"MAIL", "RCPT"} {
				if code, msg, err := tc.ReadResponse(250); err != nil {
					t.Fatalf("%s: %d %s (%v)", cmd, code, msg, err)
				}
			}
			if tr.name == "DATA" {
				if code, msg, err := tc.ReadResponse(354); err != nil {
					t.Fatalf("DATA: %d %s (%v)", code, msg, err)
				}
			}
			code, msg, _ := tc.ReadResponse(250)
			if code != 554 || !strings.HasPrefix(msg, "5.6.0 "+want) {
				t.Fatalf("%s: got %d %q, want 554 5.6.0 %q", tr.name, code, msg, want)
			}
		})
	}
	if n := len(f.queued()); n != 0 {
		t.Fatalf("%d messages queued, want none", n)
	}
}
