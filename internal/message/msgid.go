package message

import "strings"

// A raw message's Message-ID field (RFC 5322 §3.6.4) is kept when it is
// one well-formed msg-id, and replaced when it is not: RFC 6409 §8.3 says
// a submission server SHOULD add a Message-ID that is missing and SHOULD
// replace one that is malformed, and renderRaw does both for every raw
// message (the SMTP front door's, relay sendmail's, a producer's), so
// every delivery, replay and requeue of it carries the same stable one
// (MessageID). More than one Message-ID field (§3.6 allows one) leaves
// the message without an identifier anyone could rely on, and is
// replaced the same way.

// ValidMsgID reports whether v, an unfolded field body, is one msg-id of
// RFC 5322 §3.6.4:
//
//	msg-id   = [CFWS] "<" id-left "@" id-right ">" [CFWS]
//	id-left  = dot-atom-text / obs-id-left (a quoted-string, §4.5.4)
//	id-right = dot-atom-text / no-fold-literal / obs-id-right
//
// ASCII only: the server does not offer SMTPUTF8 (RFC 6532 §3.2 allows
// UTF-8 in it only with that).
func ValidMsgID(v string) bool {
	v, ok := skipCFWS(v)
	if !ok || !strings.HasPrefix(v, "<") {
		return false
	}
	v = v[1:]
	var left string
	if strings.HasPrefix(v, `"`) {
		n, ok := quotedString(v)
		if !ok {
			return false
		}
		left, v = v[:n], v[n:]
	} else {
		at := strings.IndexByte(v, '@')
		if at < 0 {
			return false
		}
		left, v = v[:at], v[at:]
		if !dotAtomText(left) {
			return false
		}
	}
	if left == "" || !strings.HasPrefix(v, "@") {
		return false
	}
	v = v[1:]
	gt := strings.IndexByte(v, '>')
	if gt < 0 {
		return false
	}
	right := v[:gt]
	if !dotAtomText(right) && !noFoldLiteral(right) {
		return false
	}
	rest, ok := skipCFWS(v[gt+1:])
	return ok && rest == ""
}

// isAtext is RFC 5322 §3.2.3's atext.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// dotAtomText: 1*atext *("." 1*atext) (RFC 5322 §3.2.3).
func dotAtomText(s string) bool {
	if s == "" {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" {
			return false
		}
		for i := 0; i < len(part); i++ {
			if !isAtext(part[i]) {
				return false
			}
		}
	}
	return true
}

// noFoldLiteral: "[" *dtext "]" (RFC 5322 §3.6.4; dtext %d33-90 /
// %d94-126, §3.4.1).
func noFoldLiteral(s string) bool {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if c := s[i]; c < 33 || c > 126 || c == '[' || c == '\\' || c == ']' {
			return false
		}
	}
	return true
}

// quotedString returns the length of the quoted-string (RFC 5322 §3.2.4)
// s starts with.
func quotedString(s string) (int, bool) {
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			if i++; i >= len(s) || s[i] > 126 {
				return 0, false
			}
		case c == '"':
			return i + 1, i > 1
		case c > 126 || c < ' ' && c != '\t':
			return 0, false
		}
	}
	return 0, false
}

// skipCFWS skips white space and comments (RFC 5322 §3.2.2, nested, with
// quoted-pairs) at the start of s; not ok for a comment that does not end.
func skipCFWS(s string) (string, bool) {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == '\\' && depth > 0:
			i++
		case c == ' ' || c == '\t':
		case depth > 0:
			if c > 126 || c < ' ' {
				return "", false
			}
		default:
			return s[i:], true
		}
	}
	return "", depth == 0
}
