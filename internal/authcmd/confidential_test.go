package authcmd_test

import (
	"testing"

	"relay365/internal/cli"
	"relay365/internal/fakeo365"
	"relay365/internal/token"
)

// An app registration that is a confidential client signs in with its
// secret (--client-secret-file/-env) in both flows: the secret goes with
// the code redemption (RFC 6749 §4.1.3) and with the device
// authorization request and every poll (RFC 8628 §3.1, §3.4), and is
// stored sealed for the refreshes. The fake refuses a registered app's
// grant without its secret (AADSTS7000218), as Entra does.
func TestLoginConfidentialClient(t *testing.T) {
	const secret = "the-app-secret"
	for _, flow := range []string{"browser", "device"} {
		t.Run(flow, func(t *testing.T) {
			w := newWorld(t, fakeo365.Config{DeviceApproveAfter: 1})
			w.fake.RegisterApp(clientID, secret)
			r := w.run(person{follow: true, env: map[string]string{"APP_SECRET": secret}},
				w.login("alerts", mailbox, "--flow", flow, "--client-secret-env", "APP_SECRET")...)
			if r.code != cli.ExitOK {
				t.Fatalf("exit %d, want 0: a confidential client's login must present its secret", r.code)
			}
			rec := w.record("alerts")
			if rec.ClientSecret != secret || rec.RefreshToken == "" {
				t.Fatalf("stored record: secret stored %t, refresh token stored %t", rec.ClientSecret == secret, rec.RefreshToken != "")
			}
			noSecrets(t, []token.Record{rec}, r.stdout, r.stderr)
		})
	}
}
