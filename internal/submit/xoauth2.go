package submit

import "github.com/emersion/go-sasl"

// XOAUTH2 is the SASL mechanism Office 365 takes for OAuth2 on SMTP
// (docs/office365.md §1; the format is Google's, which Microsoft adopted).
const XOAUTH2 = "XOAUTH2"

// xoauth2Client is a sasl.Client for XOAUTH2. The initial response goes on
// the AUTH line (RFC 4954 §4), so a successful login is one round trip.
type xoauth2Client struct {
	user, token string
}

// NewXOAUTH2 returns a sasl.Client that authenticates user with an OAuth2
// access token.
func NewXOAUTH2(user, token string) sasl.Client { return &xoauth2Client{user: user, token: token} }

// XOAUTH2Response is the initial client response:
// "user=" user "^A" "auth=Bearer " token "^A^A".
func XOAUTH2Response(user, token string) []byte {
	b := make([]byte, 0, len(user)+len(token)+20)
	b = append(b, "user="...)
	b = append(b, user...)
	b = append(b, "\x01auth=Bearer "...)
	b = append(b, token...)
	return append(b, "\x01\x01"...)
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return XOAUTH2, XOAUTH2Response(c.user, c.token), nil
}

// Next answers a server challenge. Office 365 sends none (it replies 535
// directly); a server that sends an error challenge, as Gmail does, expects
// an empty response and then sends the final error reply.
func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	return []byte{}, nil
}
