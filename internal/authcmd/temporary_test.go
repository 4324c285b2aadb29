package authcmd_test

import (
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relay365/internal/fakeo365"
)

// TestConsentTemporaryFailuresSayRunAgain: a temporary failure during
// consent (the identity platform's 503 at the code exchange or the client
// credentials grant, a 451 to the test mail, an SMTP endpoint that refuses
// the connection) ends authtool with nothing stored, so nothing retries
// it. The message must say to run the command again, not "retrying" or
// "the relay retries", which promise a retry that never comes.
func TestConsentTemporaryFailuresSayRunAgain(t *testing.T) {
	tests := []struct {
		name  string
		setup func(w *world) (person, []string)
		want  []string
	}{
		{"503 at the code exchange", func(w *world) (person, []string) {
			w.fake.FailNextTokenCalls(1)
			return person{follow: true}, w.login("alerts", mailbox)
		}, []string{"AADSTS90033", "HTTP 503", "run the command again"}},
		{"503 to client credentials", func(w *world) (person, []string) {
			w.fake.RegisterApp(clientID, "the-secret")
			w.fake.FailNextTokenCalls(1)
			return person{env: map[string]string{"APP_SECRET": "the-secret"}},
				append(w.target("app", "alerts", mailbox), "--client-secret-env", "APP_SECRET")
		}, []string{"AADSTS90033", "run the command again"}},
		{"451 to the test mail", func(w *world) (person, []string) {
			w.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"})
			return person{follow: true}, w.login("alerts", mailbox)
		}, []string{"451 4.3.0", "run the command again"}},
		{"SMTP endpoint refuses the connection", func(w *world) (person, []string) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			closed := ln.Addr().String()
			ln.Close()
			args := w.login("alerts", mailbox)
			for i, a := range args {
				if a == w.fake.SMTPAddr() {
					args[i] = closed
				}
			}
			return person{follow: true}, args
		}, []string{"connection refused", "run the command again", "--smtp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, fakeo365.Config{})
			p, args := tt.setup(w)
			r := w.failsStoringNothing(t, p, args, tt.want)
			for _, promise := range []string{"retrying", "the relay retries"} {
				if strings.Contains(r.stderr, promise) {
					t.Errorf("stderr promises a retry (%q), but authtool stored nothing and exited", promise)
				}
			}
		})
	}
}
