package ingress_test

import (
	"strings"
	"testing"
)

// TestAddressLiteralsAreOneRule: an address literal (RFC 5321 §4.1.3)
// is treated the same whether it is IPv4 or IPv6. As a recipient both
// are refused at RCPT with a reply that says why (550 5.1.2: Office 365
// delivers only to domain names), not an IPv4 literal taken (to be
// dead-lettered later) while a well-formed IPv6 one was answered "501
// 5.1.3 ... not an address: mail: missing '@' or angle-addr". As the
// envelope sender both are taken (it only picks the account), and the
// transaction goes on with its other recipients.
func TestAddressLiteralsAreOneRule(t *testing.T) {
	f := startFrontDoor(t, nil)
	for _, lit := range []string{"[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:::ffff:192.0.2.1]"} {
		c := f.login("alertmanager", alertsPassword)
		if err := c.Mail("alertmanager@"+lit, nil); err != nil {
			t.Fatalf("MAIL FROM:<alertmanager@%s>: %v", lit, err)
		}
		err := c.Rcpt("ops@"+lit, nil)
		wantReply(t, "RCPT TO:<ops@"+lit+">", err, 550, "5.1.2")
		if !strings.Contains(err.Error(), "Office 365") {
			t.Fatalf("RCPT TO:<ops@%s>: the reply does not say why: %v", lit, err)
		}
		if err := c.Rcpt("ops@contoso.com", nil); err != nil {
			t.Fatal(err)
		}
		if err := sendData(c, alertmanagerMail); err != nil {
			t.Fatalf("DATA after a refused literal: %v", err)
		}
		if m := f.queued(); len(m) == 0 {
			t.Fatal("nothing queued")
		}
	}
	m := f.queued()
	if len(m) != 3 {
		t.Fatalf("%d queued, want 3", len(m))
	}
}

// TestRecipientDomainSyntax: a recipient's domain must be a Domain of
// RFC 5321 §4.1.2 (labels of letters, digits and inner hyphens). net/mail,
// which the address is read with, took "-contoso.com", "contoso-.com",
// "con_toso.com" and a label of 64 letters, and the message was queued
// for a recipient no mail can reach; now RCPT is answered 501 5.1.3 at
// once.
func TestRecipientDomainSyntax(t *testing.T) {
	f := startFrontDoor(t, nil)
	c := f.login("alertmanager", alertsPassword)
	if err := c.Mail("alerts@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"ops@-contoso.com", "ops@contoso-.com", "ops@con_toso.com", "ops@contoso.com.", "ops@" + strings.Repeat("a", 64) + ".com"} {
		wantReply(t, "RCPT TO:<"+bad+">", c.Rcpt(bad, nil), 501, "5.1.3")
	}
	for _, good := range []string{"ops@contoso.com", "ops@a-b.c0.example", "ops@localhost", "ops@" + strings.Repeat("a", 63) + ".com"} {
		if err := c.Rcpt(good, nil); err != nil {
			t.Fatalf("RCPT TO:<%s>: %v", good, err)
		}
	}
}
