package smtpclient

import (
	"strings"
	"testing"
)

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"5.7.3 Authentication unsuccessful",
		"4.3.2 Service not available\n4.3.2 try later",
		"Hello there",
		"5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
		"9.1.1 bad class", "5.1000.1 long", "", "5..1 x", "2.0.0",
	} {
		f.Add(550, s)
	}
	f.Fuzz(func(t *testing.T, code int, text string) {
		e := ParseReply(code, text)
		if e.Code != code {
			t.Fatalf("code %d became %d", code, e.Code)
		}
		ec := e.EnhancedCode
		if ec == [3]int{} {
			if e.Message != text {
				t.Fatalf("no enhanced code, but the text changed: %q → %q", text, e.Message)
			}
			return
		}
		if c := ec[0]; c != 2 && c != 4 && c != 5 || ec[1] < 0 || ec[1] > 999 || ec[2] < 0 || ec[2] > 999 {
			t.Fatalf("enhanced code %v out of RFC 3463's range, from %q", ec, text)
		}
		if !strings.HasSuffix(text, e.Message) && !strings.Contains(text, "\n") {
			t.Fatalf("message %q is not the rest of %q", e.Message, text)
		}
	})
}

func FuzzParseEHLO(f *testing.F) {
	f.Add("fake.test Hello\nPIPELINING\nSIZE 157286400\nAUTH LOGIN XOAUTH2\nstarttls")
	f.Add("")
	f.Add("only a greeting")
	f.Fuzz(func(t *testing.T, text string) {
		ext := ParseEHLO(text)
		for k, v := range ext {
			if k == "" || k != strings.ToUpper(k) || strings.ContainsAny(k, " \n") {
				t.Fatalf("keyword %q from %q", k, text)
			}
			if strings.Contains(v, "\n") {
				t.Fatalf("parameters %q span lines", v)
			}
		}
	})
}
