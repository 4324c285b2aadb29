package message

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"
)

// Header lines have two limits (RFC 5322 §2.1.1): a line SHOULD be at
// most 78 characters and MUST be at most 998, CRLF not counted. Servers
// other than Office 365 refuse a message that passes 998 ("554 ... line
// too long"), and Alertmanager's default subject, which lists every label
// of every alert, easily does. Every header the renderer writes is folded
// at white space to 78 where it can be (RFC 5322 §2.2.3); a word too long
// for a line of its own becomes several RFC 2047 encoded-words of at most
// 75 characters each (§2), which decode back to the same word (§6.2: the
// white space between adjacent encoded-words is not part of the text).
const (
	lineSoft      = 78 // RFC 5322 §2.1.1 SHOULD
	lineHard      = 998
	maxEncodedLen = 75 // RFC 2047 §2
)

// unstructured prepares an unstructured field body (Subject, a producer's
// header): RFC 2047 encoding where it needs it, and every word that
// cannot fit a folded line of its own cut into encoded-words.
//
// White space between two encoded-words is not part of the text (RFC
// 2047 §6.2), so a word cut into encoded-words that follows another
// carries the spaces before it inside its first encoded-word; else two
// long words read back as one. White space between an encoded-word and
// plain text is text, and stays as it is.
//
// A word with "=?" in it is encoded too: a reader decodes text of an
// encoded-word's form (RFC 2047 §6.1), and "=?utf-8?q?50=25?=" in an
// alert's subject would have read "50%".
func unstructured(s string) string {
	if needsEncoding(s) {
		// Every word becomes an encoded-word, spaces included ("_").
		return mime.QEncoding.Encode("utf-8", s)
	}
	words := strings.Split(s, " ")
	out := make([]string, 0, len(words))
	lead := "" // white space before the current word, beyond the space that joins it
	prevEncoded := false
	for i, w := range words {
		if strings.Trim(w, "\t") == "" && i < len(words)-1 {
			lead += w + " " // white space alone: fold.go keeps it with the next word
			continue
		}
		if len(lead)+len(w) <= lineSoft-1 && !strings.Contains(w, "=?") {
			out = append(out, lead+w)
			prevEncoded, lead = false, ""
			continue
		}
		if prevEncoded {
			lead = " " + lead // the separator, which a reader drops between encoded-words
		}
		out = append(out, strings.Join(encodedWords(lead+w), " "))
		prevEncoded, lead = true, ""
	}
	return strings.Join(out, " ")
}

// needsEncoding reports whether s holds an octet an unstructured field
// cannot carry as it is: a control character but tab, or one above 126
// (RFC 5322 §3.2.5 text is VCHAR and WSP; RFC 2047 §1).
func needsEncoding(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return (r < ' ' && r != '\t') || r > '~' }) >= 0
}

// encodedWords B-encodes s (UTF-8) as encoded-words of at most 75
// characters, cut between runes (RFC 2047 §5(3): each encoded-word must
// hold whole characters).
func encodedWords(s string) []string {
	const overhead = len("=?utf-8?b??=")
	maxRaw := (maxEncodedLen - overhead) / 4 * 3 // bytes that encode to at most 63 characters
	var out []string
	for len(s) > 0 {
		n := min(maxRaw, len(s))
		for n < len(s) && n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		out = append(out, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return out
}

// fold writes "name: value" with CRLF, folding at spaces so lines stay
// within 78 characters where the words allow (RFC 5322 §2.2.3). A fold
// is made only before a word with text in it: white space alone (a run
// of spaces, tabs) goes with the word after it, or at the end with the
// one before, so no line is white space alone (RFC 5322 §3.2.2: FWS has
// one CRLF, and a line of WSP only is the obsolete syntax of §4.2).
func fold(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteByte(':')
	col := len(name) + 1
	unit := "" // white space waiting for a word
	for _, word := range strings.Split(value, " ") {
		unit += " " + word
		if strings.Trim(word, " \t") == "" {
			continue
		}
		// Even the first word may go on a line of its own (after the
		// white space that follows the colon, RFC 5322 §2.2.3).
		if col+len(unit) > lineSoft {
			b.WriteString("\r\n")
			col = 0
		}
		b.WriteString(unit)
		col += len(unit)
		unit = ""
	}
	b.WriteString(unit)
	b.WriteString("\r\n")
}

// attachmentDisposition is the Content-Disposition of an attachment named
// filename (RFC 2183), folded. A name that fits is one parameter as
// mime.FormatMediaType writes it; a longer one is split into RFC 2231 §3
// continuations (filename*0*=utf-8”…; filename*1*=…), percent-encoded
// (§4), each on a line of its own.
func attachmentDisposition(filename string) string {
	if v := mime.FormatMediaType("attachment", map[string]string{"filename": filename}); len("Content-Disposition: ")+len(v) <= lineSoft {
		return v
	}
	enc := percentEncode(filename)
	var parts []string
	const chunk = 60
	for i := 0; len(enc) > 0; i++ {
		n := min(chunk, len(enc))
		// Never cut a %XX escape in two.
		if p := strings.LastIndexByte(enc[:n], '%'); p >= 0 && p > n-3 && n < len(enc) {
			n = p
		}
		prefix := ""
		if i == 0 {
			prefix = "utf-8''"
		}
		parts = append(parts, fmt.Sprintf("filename*%d*=%s%s", i, prefix, enc[:n]))
		enc = enc[n:]
	}
	return "attachment;\r\n " + strings.Join(parts, ";\r\n ")
}

// percentEncode writes s as an RFC 2231 extended value's text: every
// octet that is not an attribute-char becomes %XX (§4, §7:
// attribute-char is any US-ASCII CHAR but SPACE, CTLs, "*", "'", "%" and
// the tspecials of RFC 2045 §5.1). URL escaping is not that: it leaves
// ':', '=', '@', '+', '$' and '&' as they are, and a bare tspecial ends
// the parameter, so readers lost the name.
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("*'%()<>@,;:\\\"/[]?=", c) >= 0 {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0x0f])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// foldPoint is where a line that begins with line may be folded: the
// last space or tab that follows text, so the line before the fold holds
// some (RFC 5322 §3.2.2: a fold is one CRLF before white space; a line of
// white space alone is the obsolete syntax of §4.2). -1 if there is none.
func foldPoint(line []byte) int {
	for i := len(line) - 1; i > 0; i-- {
		if isWSP(line[i]) && !isWSP(line[i-1]) {
			if len(bytes.TrimLeft(line[:i], " \t")) == 0 {
				return -1
			}
			return i
		}
	}
	return -1
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// foldRaw folds a raw header field (name, colon, body, CRLF; possibly
// already folded) whose physical lines pass 998 characters, at the last
// space or tab before the limit of each such line that follows text
// (foldPoint), white space past the limit at a line's end dropped. A
// line without such a place it cannot fold: false.
func foldRaw(field []byte) ([]byte, bool) {
	var out []byte
	rest := field
	for len(rest) > 0 {
		i := strings.Index(string(rest), "\r\n")
		line, next := rest, []byte(nil)
		if i >= 0 {
			line, next = rest[:i], rest[i+2:]
		}
		for len(line) > lineHard {
			if t := bytes.TrimRight(line, " \t"); len(t) <= lineHard {
				// White space past the limit at the end of a field
				// carries nothing a reader keeps (RFC 5322 §3.2.2), and
				// folded it would be a line of white space alone.
				line = t
				break
			}
			cut := foldPoint(line[:lineHard])
			if cut <= 0 {
				return nil, false
			}
			out = append(out, line[:cut]...)
			out = append(out, "\r\n"...)
			line = line[cut:] // the white space begins the continuation line
		}
		out = append(out, line...)
		if i >= 0 {
			out = append(out, "\r\n"...)
		}
		rest = next
	}
	return out, true
}

// MendLongField returns a raw header field ("Name: value\r\n", folded
// or not) that a renderer can send within 998 octets a line (RFC 5322
// §2.1.1). A field the worker folds (foldRaw) is returned as it is.
// One with a line it cannot fold, one word past the limit, is written
// anew where that changes nothing a reader sees:
//   - References and In-Reply-To with white space between their message
//     ids, where RFC 5322 §3.6.4 allows CFWS;
//   - an unstructured field (Subject, Comments, and the optional fields
//     of §3.6.8: X-Alert-..., any field not structured: syntaxOf) with
//     its encoded-words decoded (RFC 2047 §6.2) and the text encoded again
//     as unstructured does, each long word as encoded-words of at most 75
//     characters, and folded.
//
// Address fields are not its to mend (their addresses are rewritten by
// whoever parses them), nor other structured fields (MIME's Content-*,
// Received, DKIM-Signature, List-*: RFC 2047 §5 allows no encoded-word
// in them), nor text that is not UTF-8 (its charset unknown): false, and
// the field is refused when rendered, not sent changed.
func MendLongField(field []byte) ([]byte, bool) {
	if _, ok := foldRaw(field); ok {
		return field, true
	}
	name, value, ok := bytes.Cut(field, []byte(":"))
	if !ok {
		return nil, false
	}
	v := strings.TrimSpace(string(bytes.ReplaceAll(value, []byte("\r\n"), nil))) // unfolded, RFC 5322 §2.2.3
	switch c := canonical(string(name)); {
	case c == "References" || c == "In-Reply-To":
		out := []byte(string(name) + ": " + strings.ReplaceAll(v, "><", "> <") + "\r\n")
		if folded, ok := foldRaw(out); ok {
			return folded, true
		}
		return nil, false
	case structured(c):
		return nil, false
	}
	if !utf8.ValidString(v) {
		return nil, false
	}
	text, err := headerDecoder.DecodeHeader(v)
	if err != nil || !utf8.ValidString(text) {
		return nil, false
	}
	var b bytes.Buffer
	fold(&b, string(name), unstructured(text))
	return b.Bytes(), true
}

// headerDecoder decodes the encoded-words of an unstructured field in any
// charset IANA names (charset.go).
var headerDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

// fieldSyntax is what a header field's body is to RFC 2047: text an
// encoded-word may stand in (RFC 2047 §5(1)), or a syntax of its own.
type fieldSyntax uint8

const (
	// textSyntax: Subject, Comments and the optional fields of RFC 5322
	// §3.6.8 (X-Alert-..., any field not named in structuredFields).
	textSyntax fieldSyntax = iota
	// ownSyntax: RFC 5322 §3.6 but Subject and Comments, the trace
	// fields of §3.6.7, MIME's RFC 2045, DKIM's RFC 6376, ARC's RFC 8617,
	// Authentication-Results' RFC 8601, the list fields of RFC 2369.
	// MendLongField may not encode them.
	ownSyntax
	// idsOrURLs: fields of ownSyntax whose bodies hold message ids (RFC
	// 5322 §3.6.4) or URLs in angle brackets (RFC 2369, RFC 8058, RFC
	// 5064), which RFC 2047 §5 allows no encoded-word in and a reader
	// takes as they stand. A producer's Headers may set them, as any
	// field of ownSyntax not reserved; all are folded at white space
	// only, never encoded, so Validate holds them to ASCII and no word
	// past a line. Office 365's Message-IDs are
	// about 80 characters and unsubscribe links longer: encoded as long
	// words are, they broke threading and unsubscribing.
	idsOrURLs
)

// structuredFields is the one list of the fields with a syntax of their
// own, by canonical name, besides those that start with one of
// structuredPrefixes (idsOrURLs fields among those are named here, and
// the few fields of those families that are text).
var structuredFields = map[string]fieldSyntax{
	// RFC 2045 §8: Content-Description := "Content-Description" ":" *text,
	// unstructured text, which RFC 2047 §5(1) allows encoded-words in.
	// The other MIME fields keep a syntax of their own: Content-Type's
	// and Content-Disposition's parameters (RFC 2045 §5.1, RFC 2183 §2,
	// encoded by RFC 2231, not RFC 2047), Content-Language's tags (RFC
	// 3282 §2), Content-ID's msg-id (RFC 2045 §7), a mechanism name in
	// Content-Transfer-Encoding (RFC 2045 §6.1).
	"Content-Description": textSyntax,

	"In-Reply-To": idsOrURLs, "References": idsOrURLs, "Content-Id": idsOrURLs, "Archived-At": idsOrURLs,
	"List-Unsubscribe": idsOrURLs, "List-Unsubscribe-Post": idsOrURLs, "List-Help": idsOrURLs, "List-Subscribe": idsOrURLs,
	"List-Post": idsOrURLs, "List-Owner": idsOrURLs, "List-Archive": idsOrURLs,

	"From": ownSyntax, "Sender": ownSyntax, "Reply-To": ownSyntax, "To": ownSyntax, "Cc": ownSyntax, "Bcc": ownSyntax,
	"Date": ownSyntax, "Message-Id": ownSyntax, "Keywords": ownSyntax, "Return-Path": ownSyntax, "Received": ownSyntax,
	"Mime-Version": ownSyntax, "Authentication-Results": ownSyntax, "Received-Spf": ownSyntax,
	"Disposition-Notification-To": ownSyntax, "Return-Receipt-To": ownSyntax, "Errors-To": ownSyntax, "Autocrypt": ownSyntax,
}

// structuredPrefixes start the names of whole families of fields with a
// syntax of their own: MIME's, a resent block's (RFC 5322 §3.6.6), the
// list fields, ARC's and DKIM's.
var structuredPrefixes = []string{"Content-", "Resent-", "List-", "Arc-", "Dkim-"}

// syntaxOf is the syntax of the field with canonical name c.
func syntaxOf(c string) fieldSyntax {
	if s, ok := structuredFields[c]; ok {
		return s
	}
	for _, p := range structuredPrefixes {
		if strings.HasPrefix(c, p) {
			return ownSyntax
		}
	}
	return textSyntax
}

// structured reports whether the field with canonical name c has a
// syntax of its own, so that no encoded-word may stand in it.
func structured(c string) bool { return syntaxOf(c) != textSyntax }
