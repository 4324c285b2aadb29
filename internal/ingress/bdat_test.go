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
