package fakeo365

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// ErrMalformedXOAUTH2 is returned by ParseXOAUTH2 for anything but the exact
// XOAUTH2 client response format.
var ErrMalformedXOAUTH2 = errors.New("fakeo365: malformed XOAUTH2 response")

// ParseXOAUTH2 parses the (base64-decoded) XOAUTH2 client response
//
//	"user=" mailbox "\x01" "auth=Bearer " token "\x01\x01"
//
// strictly: no other key/value pairs, a mailbox of the form local@domain
// without spaces or control characters, the scheme "Bearer" (any case) with
// exactly one space, and an RFC 6750 b64token as the token.
func ParseXOAUTH2(b []byte) (user, token string, err error) {
	rest, ok := strings.CutSuffix(string(b), "\x01\x01")
	if !ok {
		return "", "", ErrMalformedXOAUTH2
	}
	userField, authField, ok := strings.Cut(rest, "\x01")
	if !ok {
		return "", "", ErrMalformedXOAUTH2
	}
	user, ok = strings.CutPrefix(userField, "user=")
	if !ok || !validMailbox(user) {
		return "", "", ErrMalformedXOAUTH2
	}
	credentials, ok := strings.CutPrefix(authField, "auth=")
	if !ok {
		return "", "", ErrMalformedXOAUTH2
	}
	scheme, token, ok := strings.Cut(credentials, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || !validB64Token(token) {
		return "", "", ErrMalformedXOAUTH2
	}
	return user, token, nil
}

// validMailbox accepts local@domain with printable, non-space characters.
func validMailbox(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// validB64Token implements RFC 6750:
// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
func validB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~+/", c) >= 0:
		default:
			return false
		}
	}
	return true
}
