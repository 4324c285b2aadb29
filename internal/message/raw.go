package message

import (
	"bytes"
	"net/mail"
	"strings"
	"time"
)

// Raw messages — a complete RFC 5322 message from the SMTP front door,
// relay sendmail or a producer's "raw" field — are kept as sent, with five
// exceptions, applied when the message is rendered for Office 365:
//
//   - mbox "From " lines before the header are removed (DropFromLines);
//   - line endings are CRLF (RFC 5322 §2.1, RFC 5321 §2.3.8): a bare LF
//     or a bare CR becomes CRLF, as sendmail's input and many scripts end
//     lines with LF alone; a NUL makes the message invalid (RFC 5322
//     §3.5 allows none);
//   - the account's From policy applies to the From and Sender fields as
//     it does to a JSON message's from (docs/office365.md §5), and to the
//     Resent-From and Resent-Sender fields (resentAllowed), and a From
//     of MailboxPlaceholder is the mailbox with that From's display name;
//   - Bcc and Resent-Bcc fields are removed (the envelope carries those
//     recipients, RFC 5322 §3.6.3, §3.6.6), as is Return-Path, which only the final delivery
//     writes (RFC 5321 §4.4);
//   - Date and Message-ID are added when missing (RFC 5322 §3.6 requires
//     the one and recommends the other), the Message-ID derived from the
//     account and message id so every delivery of the message carries the
//     same one; a Message-ID that is not one well-formed msg-id, or more
//     than one, is replaced by it (RFC 6409 §8.3, msgid.go).

// NormalizeRaw returns raw with every line ending as CRLF. It fails on a
// NUL byte. Already canonical input is returned as it is.
func NormalizeRaw(raw []byte) ([]byte, error) {
	if i := bytes.IndexByte(raw, 0); i >= 0 {
		return nil, invalid("raw", "contains a NUL byte at offset %d", i)
	}
	if !needsCRLF(raw) {
		return raw, nil
	}
	out := make([]byte, 0, len(raw)+len(raw)/32)
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

// DropFromLines removes the mbox "From " lines (and ">From " ones) that
// start a CRLF message, as Postfix's and Sendmail's sendmail do: a saved
// message piped back in (formail, procmail, a script) starts with one,
// and left in place it is not a header field, so the whole header would
// become the body. Relay sendmail applies it to what it reads, and the
// worker (Render, Recipients) to every raw message, so a producer's raw
// message that starts with one is sent as sendmail would send it.
//
// A line "From :" (white space before the colon, RFC 5322 §4.5's obsolete
// syntax) is a From field, not an mbox line, and stays.
func DropFromLines(raw []byte) []byte {
	for {
		line, rest, _ := bytes.Cut(raw, []byte("\r\n"))
		after, ok := bytes.CutPrefix(bytes.TrimLeft(line, ">"), []byte("From "))
		if !ok || line[0] != '>' && bytes.HasPrefix(bytes.TrimLeft(after, " \t"), []byte(":")) {
			return raw
		}
		raw = rest
	}
}

// needsCRLF reports whether raw holds a bare CR or a bare LF.
func needsCRLF(raw []byte) bool {
	for i, c := range raw {
		switch {
		case c == '\n' && (i == 0 || raw[i-1] != '\r'):
			return true
		case c == '\r' && (i+1 == len(raw) || raw[i+1] != '\n'):
			return true
		}
	}
	return false
}

// rawField is one header field of a raw message, its lines as received
// (folded lines keep their CRLF and leading white space).
type rawField struct {
	name string // as written
	raw  []byte // "Name: value\r\n" including continuation lines
}

// value is the unfolded field body (RFC 5322 §2.2.3).
func (f rawField) value() string {
	_, v, _ := bytes.Cut(f.raw, []byte(":"))
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

// splitRaw cuts a CRLF message into its header fields and its body (after
// the empty line; nil when there is none). Lines before the first field
// that are not fields, or a header block without a field name, make the
// message invalid.
func splitRaw(raw []byte) ([]rawField, []byte, error) {
	var fields []rawField
	rest := raw
	for len(rest) > 0 {
		line, after, found := bytes.Cut(rest, []byte("\r\n"))
		if !found {
			line, after = rest, nil
		}
		if len(line) == 0 { // the empty line: the body follows
			return fields, after, nil
		}
		// A message that ends inside its header block still gets a CRLF
		// after its last field.
		full := append(append([]byte(nil), line...), '\r', '\n')
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				return nil, nil, invalid("raw", "the message starts with a continuation line, not a header field")
			}
			f := &fields[len(fields)-1]
			f.raw = append(f.raw, full...)
		} else {
			name, _, ok := bytes.Cut(line, []byte(":"))
			// RFC 5322 §4.5: the obsolete syntax allows white space
			// between a field's name and its colon ("From : a@b"), and a
			// parser must take it.
			name = bytes.TrimRight(name, " \t")
			if !ok || !headerNameRE.Match(name) {
				return nil, nil, invalid("raw", "line %q is not a header field (no body separator before it?)", truncateLine(line))
			}
			fields = append(fields, rawField{name: string(name), raw: full})
		}
		rest = after
	}
	return fields, nil, nil
}

func truncateLine(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// renderRaw applies the rules above to m.Raw for sender s.
func renderRaw(m *Message, s Sender, now time.Time) ([]byte, error) {
	raw, err := NormalizeRaw(m.Raw)
	if err != nil {
		return nil, err
	}
	raw = DropFromLines(raw)
	fields, body, err := splitRaw(raw)
	if err != nil {
		return nil, err
	}
	var (
		out                 bytes.Buffer
		from, sender        *mail.Address
		hasReplyTo, hasDate bool
		ids                 []string // the Message-ID fields' bodies
	)
	for _, f := range fields {
		switch canonical(f.name) {
		case "From":
			if from != nil {
				return nil, invalid("raw", "more than one From field")
			}
			list, err := ReadAddressList(f.value())
			if err != nil || len(list) != 1 {
				return nil, invalid("raw", "From field %q is not one address", f.value())
			}
			from = list[0]
		case "Sender":
			a, err := ReadAddress(f.value())
			if err != nil {
				return nil, invalid("raw", "Sender field %q is not an address", f.value())
			}
			sender = a
		case "Resent-From", "Resent-Sender":
			if !resentAllowed(f.value(), s) {
				if s.Policy != PolicyRewrite && s.Policy != "" {
					return nil, invalid("raw", "%s field %q names an address that is not the mailbox %s nor in its send-as list (from policy %s)", canonical(f.name), f.value(), s.Mailbox, s.Policy)
				}
			}
		case "Reply-To":
			hasReplyTo = true
		case "Date":
			hasDate = true
		case "Message-Id":
			ids = append(ids, f.value())
		}
	}
	// The From policy decides the From (and, for rewrite, a Reply-To
	// carrying the original); a Sender that is neither the mailbox nor
	// the resulting From would make Office 365 check send-on-behalf
	// rights, so it is held to the same policy.
	pm := &Message{}
	if from != nil {
		pm.From = formatAddress(from)
	}
	newFrom, replyTo, err := applyPolicy(pm, s)
	if err != nil {
		return nil, err
	}
	rewritten := from == nil || !strings.EqualFold(newFrom.Address, from.Address)
	keepSender := sender != nil && !rewritten && senderAllowed(sender, s)
	if sender != nil && !rewritten && !keepSender && s.Policy != PolicyRewrite && s.Policy != "" {
		return nil, invalid("sender", "%s is not the mailbox %s nor in its send-as list (from policy %s)", sender.Address, s.Mailbox, s.Policy)
	}
	for i, f := range fields {
		if folded, ok := foldRaw(f.raw); ok {
			fields[i].raw = folded
		} else {
			return nil, invalid("raw", "the %s field has a line longer than 998 octets with no space to fold it at (RFC 5322 §2.1.1)", f.name)
		}
	}
	if n, line := longestLine(body); n > lineHard {
		return nil, invalid("raw", "line %d of the body is %d octets long, more than SMTP carries (998, RFC 5322 §2.1.1): encode long lines quoted-printable or base64", line, n)
	}
	keepID := len(ids) == 1 && ValidMsgID(ids[0])
	h := headerWriter{&out}
	for _, f := range fields {
		switch canonical(f.name) {
		case "Bcc", "Resent-Bcc", "Return-Path": // RFC 5322 §3.6.3, §3.6.6; RFC 5321 §4.4
			continue
		case "Message-Id":
			if !keepID {
				continue // malformed, or more than one: replaced below (RFC 6409 §8.3)
			}
		case "From":
			if rewritten {
				h.field("From", formatAddress(newFrom))
				if !hasReplyTo && len(replyTo) > 0 {
					h.field("Reply-To", joinAddrs(replyTo))
				}
				continue
			}
		case "Sender":
			if !keepSender {
				continue
			}
		case "Resent-From":
			// RFC 5322 §3.6.6: each resent block needs its Resent-From,
			// so under rewrite it names the mailbox instead of dropping.
			if !resentAllowed(f.value(), s) {
				h.field("Resent-From", formatAddress(&mail.Address{Address: s.Mailbox}))
				continue
			}
		case "Resent-Sender":
			if !resentAllowed(f.value(), s) {
				continue // optional (RFC 5322 §3.6.6), dropped as Sender is
			}
		}
		out.Write(f.raw)
	}
	if from == nil {
		h.field("From", formatAddress(newFrom))
	}
	if !hasDate {
		h.field("Date", now.Format(time.RFC1123Z))
	}
	if !keepID {
		h.field("Message-ID", MessageID(m.Account, m.ID, s.Mailbox))
	}
	out.WriteString("\r\n")
	out.Write(body)
	return out.Bytes(), nil
}

// longestLine returns the length of the longest line of a CRLF text (CRLF
// not counted) and its number, from 1.
func longestLine(b []byte) (n, line int) {
	for i := 1; len(b) > 0; i++ {
		l, rest, _ := bytes.Cut(b, []byte("\r\n"))
		if len(l) > n {
			n, line = len(l), i
		}
		b = rest
	}
	return n, line
}

// resentAllowed says whether a Resent-From or Resent-Sender field may stay
// as written: every address in it is one a Sender field may name.
// Office 365 may take the resent originator for its send-as check, so the
// resent originator fields (RFC 5322 §3.6.6) are held to the From policy
// as From and Sender are: under rewrite a Resent-From that fails names the
// mailbox and a Resent-Sender is removed; under allow and reject the
// message is refused.
func resentAllowed(v string, s Sender) bool {
	list, err := ReadAddressList(v)
	if err != nil || len(list) == 0 {
		return false
	}
	for _, a := range list {
		if !senderAllowed(a, s) {
			return false
		}
	}
	return true
}

// senderAllowed says whether a Sender field may stay: it names the mailbox
// or an address of the send-as list.
func senderAllowed(a *mail.Address, s Sender) bool {
	if strings.EqualFold(a.Address, s.Mailbox) {
		return true
	}
	for _, sa := range s.SendAs {
		if strings.EqualFold(sa, a.Address) {
			return s.Policy == PolicyAllow
		}
	}
	return false
}

// MendFieldNames returns raw (CRLF line endings) with the white space
// between a header field's name and its colon removed: "Subject : x" is
// RFC 5322's obsolete syntax (§4.5.3, obs-optional and the obs- forms of
// every field), which a receiver must accept (§4) but net/mail, the
// worker and Office 365 do not; written without it, as §4 asks a
// generator to, it reads as relay sendmail's tidyHeader writes it. Only
// the header section is looked at (up to its empty line); continuation
// lines and lines that are not fields are left alone. Otherwise raw is
// returned as it is.
func MendFieldNames(raw []byte) []byte {
	var out []byte // nil until a field is mended
	done := 0      // raw[:done] is in out
	eachHeaderLine(raw, func(i int, line []byte) bool {
		if line[0] != ' ' && line[0] != '\t' {
			if name, _, ok := bytes.Cut(line, []byte(":")); ok {
				if trimmed := bytes.TrimRight(name, " \t"); len(trimmed) < len(name) && headerNameRE.Match(trimmed) {
					out = append(append(out, raw[done:i+len(trimmed)]...), ':')
					done = i + len(name) + 1
				}
			}
		}
		return true
	})
	if out == nil {
		return raw
	}
	return append(out, raw[done:]...)
}

// StartBody returns raw (CRLF line endings) with its header section ended
// where its body starts, as a production MSA (Postfix's cleanup) and
// relay sendmail read a message that lacks the empty line: before the
// first line that is neither a header field (RFC 5322 §2.2: a field
// name, printable US-ASCII but ':', and a colon; with §4.5.3's obsolete
// white space before the colon) nor the continuation of one (§2.2.3), an
// empty line is inserted, and that line starts the body (§2.1: the header
// section, an empty line, the body). An empty raw is an empty header
// section and an empty body ("\r\n"): a message with no header field,
// which the MSA completes (RFC 6409 §8). Otherwise raw is returned as it
// is.
func StartBody(raw []byte) []byte {
	if len(raw) == 0 {
		return []byte("\r\n")
	}
	body := -1 // where the first line that is not a field starts
	eachHeaderLine(raw, func(i int, line []byte) bool {
		field := i > 0 && (line[0] == ' ' || line[0] == '\t')
		if !field {
			name, _, ok := bytes.Cut(line, []byte(":"))
			field = ok && headerNameRE.Match(bytes.TrimRight(name, " \t"))
		}
		if !field {
			body = i
		}
		return field
	})
	if body < 0 {
		// The empty line ends the header section as it should, or the
		// message is header fields only, without a body.
		return raw
	}
	out := make([]byte, 0, len(raw)+2)
	return append(append(append(out, raw[:body]...), '\r', '\n'), raw[body:]...)
}

// ReadAsSendmail is raw (CRLF line endings) with its header section read
// as sendmail and Postfix read one: ended where a line that is not a field
// starts the body (StartBody), its field names' obsolete white space before
// the colon removed (MendFieldNames). The SMTP front door and relay
// sendmail both take a message so.
func ReadAsSendmail(raw []byte) []byte { return MendFieldNames(StartBody(raw)) }

// eachHeaderLine calls f with the offset and the text (CRLF not included) of
// each line of raw's header section, up to its empty line or the end of
// raw, until f returns false. Every line f sees is non-empty.
func eachHeaderLine(raw []byte, f func(i int, line []byte) bool) {
	for i := 0; i < len(raw); {
		line := raw[i:]
		if j := bytes.Index(line, []byte("\r\n")); j >= 0 {
			line = line[:j]
		}
		if len(line) == 0 || !f(i, line) {
			return // the empty line: the body follows
		}
		i += len(line) + 2
	}
}
