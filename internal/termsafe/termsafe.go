// Package termsafe keeps text that came from outside from driving the
// terminal it is printed on. A message id, a header or a body that holds
// ESC [ … or ESC ] … (ANSI and xterm control sequences) can clear the
// screen, retitle the window, move the cursor over earlier output or, on
// some terminals, write to the clipboard; a C1 control (U+0080–U+009F, or
// its lone byte on an 8-bit terminal) can do the same, and the Unicode
// bidirectional controls reorder what is shown. Such characters are
// written as visible Go-style escapes (\x1b, \u009b, \u202e) instead.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Unsafe reports whether r must not reach a terminal as it is: the C0
// controls (tab and newline included: Line escapes them, Text keeps
// them), DEL, the C1 controls, and the bidirectional formatting
// characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
func Unsafe(r rune) bool {
	switch {
	case unicode.IsControl(r): // C0, DEL, C1
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// Index is the byte offset of the first unsafe character or invalid UTF-8
// byte in s, or -1 when there is none.
func Index(s string) int {
	for i, r := range s {
		if Unsafe(r) || (r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD")) {
			return i
		}
	}
	return -1
}

// Line is s made safe for one line of output (a table cell, a header
// value): every unsafe character, tab and newline included, and every
// invalid UTF-8 byte is written as an escape. Backslashes are left as
// they are, so text without unsafe characters comes out unchanged.
func Line(s string) string { return escape(s, false) }

// Text is s made safe for multi-line output (a message body): as Line,
// but newlines and tabs stay, and CRLF line endings become LF (a lone CR,
// which would let a later line overwrite an earlier one, is escaped).
func Text(s string) string {
	return escape(strings.ReplaceAll(s, "\r\n", "\n"), true)
}

func escape(s string, multiline bool) string {
	if Index(s) < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case multiline && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case Unsafe(r):
			b.WriteString(escapeRune(r))
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func escapeRune(r rune) string {
	switch r {
	case '\a':
		return `\a`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\v':
		return `\v`
	}
	if r < 0x80 {
		return fmt.Sprintf(`\x%02x`, r)
	}
	return fmt.Sprintf(`\u%04x`, r)
}

// JSON makes encoded JSON safe to print. encoding/json escapes the C0
// controls inside strings but writes DEL, the C1 controls and the
// bidirectional controls as they are, and copies a json.RawMessage's
// bytes, invalid UTF-8 included; JSON rewrites each of those as a \uXXXX
// escape (an invalid byte as \ufffd), which decodes to the same text, so
// the result is still the same JSON. Outside strings valid JSON has only
// whitespace, which is kept.
func JSON(b []byte) []byte {
	s := string(b)
	if Index(s) < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			out = append(out, `\ufffd`...)
		case r == '\n' || r == '\t' || r == '\r' || !Unsafe(r):
			out = append(out, s[i:i+n]...)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += n
	}
	return out
}

// Shorten is s when it is at most n bytes long; else as much of its start
// as fits in n-1 bytes without cutting a UTF-8 sequence, and "…" to mark
// the cut: text from outside kept to a table cell or a line of a message.
func Shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 1
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
