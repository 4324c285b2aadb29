package smtpclient

import (
	"strings"

	"github.com/emersion/go-smtp"
)

// ParseReply turns a reply's code and text (lines joined by "\n", codes
// removed) into an *smtp.SMTPError, taking the enhanced status code off the
// front of the text where there is one (RFC 2034 §4: "5.7.3 Authentication
// unsuccessful"). RFC 2034 §4 puts the code on every line of a multiline
// reply, but servers differ: go-smtp (and so the fake Office 365) writes it
// on the last line only. The code is therefore taken from the first line
// that starts with one, and removed from every line that repeats it.
func ParseReply(code int, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: text}
	lines := strings.Split(text, "\n")
	var code3 string
	for _, l := range lines {
		first, _, _ := strings.Cut(l, " ")
		if ec, ok := parseEnhanced(first); ok {
			// Kept even when its class (2, 4, 5) is not the basic
			// code's first digit, as RFC 3463 §2 wants it to be:
			// the subject and detail still name the condition, and
			// the caller lets the basic code decide permanence
			// (RFC 5321 §4.2.1).
			e.EnhancedCode, code3 = ec, first
			break
		}
	}
	if code3 == "" {
		return e
	}
	for i, l := range lines {
		if l == code3 {
			lines[i] = ""
		} else {
			lines[i] = strings.TrimPrefix(l, code3+" ")
		}
	}
	e.Message = strings.Join(lines, "\n")
	return e
}

// parseEnhanced parses "class.subject.detail" (RFC 3463 §2): class 2, 4 or
// 5, subject and detail of one to three digits.
func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	var ec smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		if len(p) < 1 || len(p) > 3 || (i == 0 && len(p) != 1) {
			return ec, false
		}
		n := 0
		for _, d := range []byte(p) {
			if d < '0' || d > '9' {
				return ec, false
			}
			n = n*10 + int(d-'0')
		}
		ec[i] = n
	}
	if c := ec[0]; c != 2 && c != 4 && c != 5 {
		return ec, false
	}
	return ec, true
}

// ParseEHLO reads the text of a 250 reply to EHLO (RFC 5321 §4.1.1.1): the
// first line greets, each further line is a keyword and its parameters.
// Keywords are returned in upper case (they are case-insensitive).
func ParseEHLO(text string) map[string]string {
	ext := map[string]string{}
	lines := strings.Split(text, "\n")
	for _, line := range lines[1:] {
		kw, params, _ := strings.Cut(strings.TrimSpace(line), " ")
		if kw == "" {
			continue
		}
		ext[strings.ToUpper(kw)] = strings.TrimSpace(params)
	}
	return ext
}
