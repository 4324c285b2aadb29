package ingress

import (
	"bytes"
	"strings"
)

// A submitted message's Message-ID field (RFC 5322 §3.6.4) is kept when
// it is one well-formed msg-id, and removed when it is not: RFC 6409
// §8.3 says a submission server SHOULD add a Message-ID that is missing
// and SHOULD replace one that is malformed. The one the message then
// leaves with is the one every raw message without a Message-ID gets
// when the worker renders it (message.MessageID, derived from the account
// and the relay's message id), so every delivery, replay and requeue of
// the message carries the same one; the relay's message id (the
// Nats-Msg-Id, docs/design.md §7.10) is not touched. More than one
// Message-ID field (RFC 5322 §3.6 allows one) leaves the message without
// an identifier anyone could rely on, and is replaced the same way.

// dropBadMessageID returns raw (CRLF line endings: a whole message or its
// header section) without its Message-ID fields when they are not one
// well-formed msg-id, and the values removed; raw itself and nil when
// there is nothing to replace.
func dropBadMessageID(raw []byte) ([]byte, []string) {
	type span struct{ start, end int }
	var (
		ids    []span
		values []string
	)
	for off, inID := 0, false; off < len(raw); {
		end := bytes.Index(raw[off:], []byte("\r\n"))
		if end < 0 {
			end = len(raw)
		} else {
			end += off + 2
		}
		line := raw[off:end]
		switch {
		case bytes.Equal(line, []byte("\r\n")): // the end of the header section
			off = len(raw)
			continue
		case line[0] == ' ' || line[0] == '\t': // a continuation line (RFC 5322 §2.2.3)
			if inID {
				ids[len(ids)-1].end = end
			}
		default:
			name, _, _ := bytes.Cut(line, []byte(":"))
			inID = strings.EqualFold(string(name), "Message-ID")
			if inID {
				ids = append(ids, span{off, end})
			}
		}
		off = end
	}
	for _, s := range ids {
		_, v, _ := bytes.Cut(raw[s.start:s.end], []byte(":"))
		values = append(values, strings.TrimSpace(string(bytes.ReplaceAll(v, []byte("\r\n"), nil))))
	}
	if len(ids) == 0 || len(ids) == 1 && validMsgID(values[0]) {
		return raw, nil
	}
	out := make([]byte, 0, len(raw))
	prev := 0
	for _, s := range ids {
		out = append(out, raw[prev:s.start]...)
		prev = s.end
	}
	return append(out, raw[prev:]...), values
}

// validMsgID reports whether v, an unfolded field body, is one msg-id of
// RFC 5322 §3.6.4:
//
//	msg-id   = [CFWS] "<" id-left "@" id-right ">" [CFWS]
//	id-left  = dot-atom-text / obs-id-left (a quoted-string, §4.5.4)
//	id-right = dot-atom-text / no-fold-literal / obs-id-right
//
// ASCII only: the server does not offer SMTPUTF8 (RFC 6532 §3.2 allows
// UTF-8 in it only with that).
func validMsgID(v string) bool {
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
