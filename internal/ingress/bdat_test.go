package ingress_test

import (
	"fmt"
	"strings"
	"testing"

	"relay365/internal/message"
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

// TestContentWithoutAHeaderSectionIsTheBody: what the front door takes
// as a message is what relay sendmail and a production MSA (Postfix's
// cleanup) take. A line of the header section that is neither a header
// field nor its continuation starts the body, behind the empty line it
// lacked (RFC 5322 §2.1: header fields, then an empty line, then the
// body); an entirely empty DATA (or BDAT 0 LAST as the only chunk) is a
// message with an empty header section and an empty body. Either leaves
// valid as a message with no header field does: the front door adds the
// Date, the worker the From and Message-ID (RFC 6409 §8;
// TestEmptyHeaderSectionLeavesAsAValidMessage). DATA of only "hello" got
// 554 5.6.0 malformed MIME header line, and an empty DATA 554 5.6.0 "the
// message is empty", while relay sendmail queued both.
func TestContentWithoutAHeaderSectionIsTheBody(t *testing.T) {
	f := startFrontDoor(t, nil)
	for _, tr := range []struct{ name, cmds, head, body string }{
		{"DATA hello", "DATA\r\nhello\r\n.\r\n", "", "hello\r\n"},
		{"DATA field then text", "DATA\r\nSubject: disk\r\nsda1 is full\r\n.\r\n", "Subject: disk\r\n", "sda1 is full\r\n"},
		{"DATA empty", "DATA\r\n.\r\n", "", ""},
		{"BDAT 0 LAST", "BDAT 0 LAST\r\n", "", ""},
		// RFC 5322 §4.5.3's obsolete white space before a field's colon
		// (obs-optional): a field, written without it as relay sendmail
		// does (554 "malformed MIME header line" before).
		{"DATA white space before the colon", "DATA\r\nSubject : disk\r\nX-Alert-Name\t : sda1\r\n\r\nfull\r\n.\r\n",
			"Subject: disk\r\nX-Alert-Name: sda1\r\n", "full\r\n"},
	} {
		t.Run(tr.name, func(t *testing.T) {
			before := len(f.queued())
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
			if strings.HasPrefix(tr.cmds, "DATA") {
				if code, msg, err := tc.ReadResponse(354); err != nil {
					t.Fatalf("DATA: %d %s (%v)", code, msg, err)
				}
			}
			if code, msg, err := tc.ReadResponse(250); err != nil {
				t.Fatalf("%s: got %d %q (%v), want 250", tr.name, code, msg, err)
			}
			msgs := f.queued()
			if len(msgs) != before+1 {
				t.Fatalf("%d queued, want %d", len(msgs), before+1)
			}
			m, err := message.Decode(msgs[len(msgs)-1].Data)
			if err != nil {
				t.Fatal(err)
			}
			raw := string(m.Raw)
			if !strings.HasPrefix(raw, "Received: ") || !strings.HasSuffix(raw, "\r\n"+tr.head+"\r\n"+tr.body) {
				t.Fatalf("queued raw message:\n%q\nwant it to end with header %q, an empty line, body %q", raw, tr.head, tr.body)
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("queued message does not validate: %v", err)
			}
		})
	}
}
