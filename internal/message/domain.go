package message

import (
	"strings"
	"unicode/utf8"
)

// MaxDomain is the longest domain, RFC 5321 §4.5.3.1.2.
const MaxDomain = 255

// IsDomain reports whether d is a Domain of RFC 5321 §4.1.2:
//
//	Domain     = sub-domain *("." sub-domain)
//	sub-domain = Let-dig [Ldh-str]
//	Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig
//
// with ASCII labels of at most 63 octets and at most 255 in all
// (§4.5.3.1.2, RFC 1035 §2.3.4). A label with non-ASCII letters is a
// U-label of an internationalised domain (RFC 6531 §3.3, sent under
// SMTPUTF8): it must be UTF-8 and hold no ASCII but letters, digits and
// inner hyphens. net/mail takes more ("-contoso.com", "a_b.com", labels
// of any length), and a message was queued for a recipient no mail can
// reach.
func IsDomain(d string) bool {
	if d == "" || len(d) > MaxDomain || !utf8.ValidString(d) {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		ascii := true
		for i := 0; i < len(label); i++ {
			switch c := label[i]; {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
			case c >= utf8.RuneSelf:
				ascii = false
			default:
				return false
			}
		}
		if ascii && len(label) > 63 {
			return false
		}
	}
	return true
}

// IsAddressLiteral reports whether a domain is an address literal,
// "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3). The relay
// sends only through Office 365, which delivers to domain names, so a
// recipient at one could only be dead-lettered.
func IsAddressLiteral(d string) bool { return strings.HasPrefix(d, "[") }

// routable refuses a recipient address Office 365 cannot deliver to:
// one at an address literal, or at what is not a domain.
func routable(field, addr string) error {
	d := addr[strings.LastIndexByte(addr, '@')+1:]
	switch {
	case IsAddressLiteral(d):
		return invalid(field, "recipient %q has an address literal for a domain (RFC 5321 §4.1.3): mail goes out through Office 365, which delivers only to domain names", addr)
	case !IsDomain(d):
		return invalid(field, "recipient %q: %q is not a domain (RFC 5321 §4.1.2: labels of letters, digits and inner hyphens)", addr, d)
	}
	return nil
}
