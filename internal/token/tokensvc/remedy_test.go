package tokensvc

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"relay365/internal/token"
)

// TestExpiredSecretRemedyOfADelegatedAccount: a delegated account whose
// app registration is a confidential client refreshes with its client
// secret; when the secret expires (invalid_client AADSTS7000222) the
// remedy in the error, /status and the logs must name the command that
// stores a new secret for it, authtool login --client-secret-file, not
// authtool app, which would make it an app-only account.
func TestExpiredSecretRemedyOfADelegatedAccount(t *testing.T) {
	e := newEnv(t)
	f := newAnswerFront(e)
	e.replica("r1")
	e.consentThrough(f, "alerts")
	f.answer(http.StatusUnauthorized, "application/json",
		`{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired.","error_codes":[7000222]}`)
	c := e.client()
	_, err := c.ForceRefresh(e.ctx, "alerts")
	var ie *token.IdentityError
	if !errors.As(err, &ie) || ie.Class != token.StateConfigError {
		t.Fatalf("expired secret: %v", err)
	}
	st, err := c.StatusOf(e.ctx, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	for where, remedy := range map[string]string{"error": ie.Remedy, "status": st.Remedy} {
		if !strings.Contains(remedy, "authtool login --account alerts") || strings.Contains(remedy, "authtool app") {
			t.Errorf("%s remedy for a delegated account: %q", where, remedy)
		}
	}
}
