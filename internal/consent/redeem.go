package consent

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/oauth2"

	"relay365/internal/account"
	"relay365/internal/token"
)

// AppToken gets an app-only access token for acct with the client
// credentials grant (RFC 6749 §4.4, golang.org/x/oauth2/clientcredentials
// through token.Exchange, the same call the relay makes later). No person
// signs in: the app's secret and the admin's consent to SMTP.SendAsApp are
// what count. A refusal is an *token.IdentityError whose remedy names the
// account (7000215 wrong secret, 700016 app not in tenant, ...).
func AppToken(ctx context.Context, hc *http.Client, acct account.Account, secret string) (*oauth2.Token, error) {
	if !acct.AppOnly {
		return nil, errors.New("AppToken needs an app-only account")
	}
	if secret == "" {
		return nil, errors.New("no client secret given")
	}
	tok, err := token.Exchange(ctx, hc, acct, token.Record{ClientSecret: secret})
	if err != nil {
		return nil, fmt.Errorf("client credentials: %w", token.Classify(err).ForAccount(acct.Alias, true))
	}
	return tok, nil
}

// Refresh redeems a refresh token brought from another tool once (RFC 6749
// §6), which proves it and yields an access token for the test mail. The
// identity platform rotates refresh tokens, so the returned token carries
// the newest one; a server that does not rotate leaves the given one in
// place. secret is for confidential clients and usually empty.
func Refresh(ctx context.Context, hc *http.Client, acct account.Account, refreshToken, secret string) (*oauth2.Token, error) {
	if refreshToken == "" {
		return nil, errors.New("the refresh token is empty")
	}
	tok, err := token.Exchange(ctx, hc, acct, token.Record{RefreshToken: refreshToken, ClientSecret: secret})
	if err != nil {
		return nil, fmt.Errorf("redeeming the refresh token: %w", token.Classify(err).ForAccount(acct.Alias, acct.AppOnly))
	}
	if tok.RefreshToken == "" {
		tok.RefreshToken = refreshToken
	}
	return tok, nil
}
