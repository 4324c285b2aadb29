package submit

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// XOAUTH2 is the SASL mechanism Office 365 takes for OAuth2 on SMTP
// (docs/office365.md §1; the format is Google's, which Microsoft adopted).
const XOAUTH2 = "XOAUTH2"

// xoauth2Client is a sasl.Client for XOAUTH2. The initial response goes on
// the AUTH line (RFC 4954 §4), so a successful login is one round trip.
type xoauth2Client struct {
	user, token string
	challenged  bool // answered the error challenge
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
//
// RFC 7628 §3.2.3 has the server send that challenge once and then fail
// the exchange; a second one is answered with an error, which makes the
// client cancel with "*" (RFC 4954 §4) instead of answering empty lines
// until the command timeout.
func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if c.challenged {
		return nil, errSecondChallenge
	}
	c.challenged = true
	return []byte{}, nil
}

var errSecondChallenge = errors.New("XOAUTH2: the server challenged again after its error challenge")

// scrubAuth takes out of a refusal of AUTH (or of any later command on
// the session: the server has had the token by then) whatever the server quoted of
// the client's response: a server that answers a line it did not expect
// with "unrecognized: <line>" would otherwise put the bearer token, in
// base64, into the error, and from there into the logs, /status and dead
// letters. Any run of token characters that shares minEcho bytes with the
// response or the token, in any of echoForms, becomes "[redacted]".
//
// A line without a reply code is no reply (Code 0), but net/textproto
// quotes it in its error, which Error prints: that error is scrubbed too.
func scrubAuth(e *SMTPError, user, token string) *SMTPError {
	if token == "" {
		return e
	}
	secrets := echoForms(XOAUTH2Response(user, token), token)
	if e.Code == 0 {
		if e.Err != nil {
			if text := redactEchoes(e.Err.Error(), secrets); text != e.Err.Error() {
				e.Err = scrubbedError{text: text, err: e.Err}
			}
		}
		return e
	}
	text := redactEchoes(e.Text, secrets)
	if text != e.Text {
		e.Text = text
		var se *smtp.SMTPError
		if errors.As(e.Err, &se) {
			e.Err = &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: text}
		}
	}
	return e
}

// scrubbedError is err printed as text, err's own text with the secrets
// it quoted redacted; errors.Is and errors.As still find err.
type scrubbedError struct {
	text string
	err  error
}

func (e scrubbedError) Error() string { return e.text }
func (e scrubbedError) Unwrap() error { return e.err }

// echoForms are the forms in which a server may quote the response or
// the token: as sent (base64), re-encoded base64url, or the decoded bytes
// in hex, either case (a server that logs a line it could not parse as
// bytes).
func echoForms(resp []byte, token string) []string {
	forms := []string{
		base64.StdEncoding.EncodeToString(resp), base64.URLEncoding.EncodeToString(resp), token,
		hex.EncodeToString(resp), hex.EncodeToString([]byte(token)),
	}
	for _, f := range forms[3:] {
		forms = append(forms, strings.ToUpper(f))
	}
	return forms
}

// minEcho is the shortest quote of a secret that is redacted: long
// enough that a host name in Office 365's reply ("[SN4PR0601CA0003...]")
// never matches by chance, short enough that a quote cut off anywhere is
// caught.
const minEcho = 16

func redactEchoes(text string, secrets []string) string {
	var b strings.Builder
	for i := 0; i < len(text); {
		j := i
		for j < len(text) && tokenByte(text[j]) {
			j++
		}
		if j == i {
			b.WriteByte(text[i])
			i++
			continue
		}
		run := text[i:j]
		if quotes(run, secrets) {
			b.WriteString("[redacted]")
		} else {
			b.WriteString(run)
		}
		i = j
	}
	return b.String()
}

// tokenByte: base64, base64url and a JWT's dots.
func tokenByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("+/=-_.", c) >= 0
}

func quotes(run string, secrets []string) bool {
	for k := 0; k+minEcho <= len(run); k++ {
		for _, s := range secrets {
			if strings.Contains(s, run[k:k+minEcho]) {
				return true
			}
		}
	}
	return false
}
