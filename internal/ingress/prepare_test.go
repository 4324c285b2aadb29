package ingress

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/clock"
	"relay365/internal/message"
)

// BenchmarkSubmission is the front door's own work for one message of a
// kept-open session, between reading DATA and publishing: MAIL (the
// account lookup by envelope sender), RCPT, and prepare (parse, Received
// field, validation, the trial render, encoding). Reading the DATA over
// TLS and waiting for the PubAck are left out: `relay bench --ingress`
// measures those end to end. The producer's account is one of n
// registered accounts.
func BenchmarkSubmission(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) {
			ss, from := benchSession(n)
			raw := benchRaw(from, 2048)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				envelope(b, ss, from)
				if _, res, err := ss.prepare("client.example.org", raw); err != nil {
					b.Fatal(res, err)
				}
				ss.Reset()
			}
		})
	}
}

// TestPrepareUsesTheEnvelopeSendersAccount: with many accounts, MAIL's
// lookup finds the one whose mailbox is the envelope sender, and a
// sender of an account the producer may not use is refused.
func TestPrepareUsesTheEnvelopeSendersAccount(t *testing.T) {
	ss, from := benchSession(50)
	envelope(t, ss, from)
	p, _, err := ss.prepare("client.example.org", benchRaw(from, 1024))
	if err != nil || p.acct.Alias != "acct-49" {
		t.Fatalf("prepare: %v, account %+v", err, p.acct)
	}
	if err := ss.Mail("acct-3@contoso.com", nil); err == nil {
		t.Fatal("MAIL from another account's mailbox accepted")
	}
}

// TestPrepareNeedsEnvelopeRecipients: an SMTP message goes to its
// envelope's recipients; without any it is refused, not sent to the
// addresses of its To, Cc and Bcc fields (what message.Validate does with
// a producer's raw message that names no recipients).
func TestPrepareNeedsEnvelopeRecipients(t *testing.T) {
	ss, from := benchSession(1)
	if err := ss.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	raw := fmt.Appendf(nil, "From: <%s>\r\nTo: <header-to@fabrikam.com>\r\nBcc: <header-bcc@fabrikam.com>\r\n\r\nx\r\n", from)
	if p, _, err := ss.prepare("client.example.org", raw); err == nil {
		m, _ := message.Decode(p.data)
		t.Fatalf("prepared with no envelope recipient (to %v: the worker would take the header fields' addresses)", m.To)
	}
}

// envelope starts a transaction on ss from the account's mailbox to
// ops@fabrikam.com.
func envelope(tb testing.TB, ss *session, from string) {
	tb.Helper()
	if err := ss.Mail(from, nil); err != nil {
		tb.Fatal(err)
	}
	if err := ss.Rcpt("ops@fabrikam.com", nil); err != nil {
		tb.Fatal(err)
	}
}

// benchSession is an authenticated session of a producer allowed to use
// the last of n accounts; from is that account's mailbox.
func benchSession(n int) (*session, string) {
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	s := &Server{cfg: Config{Hostname: "relay.example.org"}, deps: Deps{Clock: clock.Real()}, log: log,
		metrics: newMetrics(prometheus.NewRegistry()), accounts: &cache[account.Account]{m: map[string]account.Account{}}}
	for i := range n {
		a := account.Account{Alias: fmt.Sprintf("acct-%d", i), Mailbox: fmt.Sprintf("acct-%d@contoso.com", i),
			Tenant: "contoso.onmicrosoft.com", ClientID: "c", SendAs: []string{fmt.Sprintf("alias-%d@contoso.com", i)}}
		a.Normalize()
		s.accounts.set(a.Alias, a, true)
	}
	last := fmt.Sprintf("acct-%d", n-1)
	// The producer is registered, as the one a session logged in as is.
	pr := Producer{Name: "bench", Accounts: []string{last}, Hash: "$argon2id$bench"}
	s.prods = &cache[Producer]{m: map[string]Producer{pr.Name: pr}}
	ss := &session{s: s, remote: "127.0.0.1", log: log, producer: &pr}
	return ss, last + "@contoso.com"
}

// benchRaw is a plain text message of about size bytes from from.
func benchRaw(from string, size int) []byte {
	raw := fmt.Appendf(nil, "From: Relay bench <%s>\r\nTo: <ops@fabrikam.com>\r\nSubject: load 1234\r\nDate: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		from, time.Now().Format(time.RFC1123Z))
	line := []byte("The quick brown fox jumps over the lazy dog; pack my box with jugs. 0123\r\n")
	for len(raw) < size {
		raw = append(raw, line...)
	}
	return raw
}
