// Package message is the wire format producers publish on mail.send.<account>
// (docs/design.md §3), its validation and its rendering into an RFC 5322 message.
//
// Validation happens twice on purpose: a producer validates before publishing
// so a person gets the error at once, and the worker validates again because
// anything on the subject may have been published by `nats pub`. A message
// that fails in the worker is never dropped: the worker dead-letters it with
// the *Invalid error's text as the reason.
//
// Every header value that reaches the rendered message passes through one
// check for CR and LF (RFC 5322 §2.2: a header field is one line unless
// folded), so no producer can inject headers or recipients.
package message

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/textproto"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"relay365/internal/termsafe"
)

// Office 365 limits (docs/office365.md §3).
const (
	// RecipientsPerTransaction is Office 365's default recipient limit per
	// message, that is per SMTP transaction. The relay sends a message with
	// more recipients as several transactions of at most this many
	// (Rendered.Batches), each paced on its own.
	RecipientsPerTransaction = 500
	// MaxRecipients is the most recipients one message may have: a whole
	// day's budget of one mailbox (10,000 per rolling 24 hours). A message
	// with more could never be sent within Office 365's limits.
	MaxRecipients = 10000
	// MaxSize is the default mailbox send limit, measured after encoding.
	MaxSize = 35 << 20
)

// Message is one notification as producers publish it (JSON).
type Message struct {
	ID          string            `json:"id,omitempty"`
	Account     string            `json:"account,omitempty"`
	From        string            `json:"from,omitempty"`
	ReplyTo     []string          `json:"reply_to,omitempty"`
	To          []string          `json:"to,omitempty"`
	Cc          []string          `json:"cc,omitempty"`
	Bcc         []string          `json:"bcc,omitempty"`
	Subject     string            `json:"subject,omitempty"`
	Text        string            `json:"text,omitempty"`
	HTML        string            `json:"html,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Attachments []Attachment      `json:"attachments,omitempty"`
	// Raw is a complete RFC 5322 message (base64 in JSON) sent as it is
	// but for the rules of raw.go (CRLF line endings, the From policy, no
	// Bcc field, Date and Message-ID when missing), instead of the fields
	// above. Envelope recipients come from To, Cc and Bcc when given, else
	// from the raw message's To, Cc and Bcc fields, or its Resent-To,
	// Resent-Cc and Resent-Bcc fields when it has Resent- fields
	// (RecipientFields).
	Raw []byte `json:"raw,omitempty"`
	// Body names a raw message kept in the body store, for one too large
	// to travel inside the JSON (body.go). It is set by producers, not
	// people: it replaces raw and the content fields, and the envelope
	// recipients (to, cc, bcc) must be given.
	Body *BodyRef `json:"body,omitempty"`

	// Unknown lists the JSON fields Decode found and ignored (never
	// encoded).
	Unknown []string `json:"-"`
}

// Attachment is one file attached to the message (Data is base64 in JSON).
type Attachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type,omitempty"`
	Data        []byte `json:"data"`
}

// Invalid is the error for input that can never be sent. Its text is the
// reason recorded on the dead-lettered copy.
type Invalid struct {
	Field  string
	Reason string
	// Err is the typed cause, when there is one: a *TooLarge for a
	// message over MaxSize (errors.As finds it through Invalid), so that a
	// front door answers 552 5.3.4 (RFC 3463 §3.4) and not 554 5.6.0
	// without reading the reason's words.
	Err error
}

func (e *Invalid) Error() string {
	if e.Field == "" {
		return "invalid message: " + e.Reason
	}
	return fmt.Sprintf("invalid message: %s: %s", e.Field, e.Reason)
}

func (e *Invalid) Unwrap() error { return e.Err }

func invalid(field, format string, args ...any) error {
	return &Invalid{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// tooBig is the *Invalid for a message of size octets (what, as the
// reason words it: "" or " after encoding") over MaxSize, with a
// *TooLarge as its cause. Its text is what it always was: dead letters'
// reasons stay as they were.
func tooBig(field, what string, size int64) error {
	return &Invalid{Field: field, Reason: fmt.Sprintf("%d bytes%s, Office 365 accepts at most %d", size, what, MaxSize),
		Err: &TooLarge{Size: size, Limit: MaxSize}}
}

// TooLarge is a message over the size limit: Office 365's MaxSize, or an
// account's own (max_message_bytes). body.TooLarge and
// producer.TooLarge are this type.
type TooLarge struct {
	Size  int64 // its size, or as much as was read of it (AtLeast)
	Limit int64
	// AtLeast: reading stopped at Size, so the message is that or more.
	AtLeast bool
	// Account, when the limit is the account's own (max_message_bytes).
	Account string
}

func (e *TooLarge) Error() string {
	more, whose := "", ""
	if e.AtLeast {
		more = " or more"
	}
	if e.Account != "" {
		whose = " of account " + e.Account
	}
	return fmt.Sprintf("message of %d bytes (%s)%s is over the size limit of %d bytes (%s)%s", e.Size, human(e.Size), more, e.Limit, human(e.Limit), whose)
}

// human is n in MB (1024²), or in KB below one MB.
func human(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
}

// IsInvalid reports whether err says the input itself is bad.
func IsInvalid(err error) bool {
	var inv *Invalid
	return errors.As(err, &inv)
}

// Decode parses JSON. A field the relay does not know is ignored, not
// refused: a producer on a newer schema, or one that adds a field of its
// own, must not lose alerts. The names of such fields are in m.Unknown
// (attachment fields as "attachments[].name"), for the worker to count
// and log. (So a misspelled field, "subjet", goes unnoticed by the
// decoder: the worker logs it, relay publish warns about it.) Field names
// match case-insensitively, as encoding/json matches them.
//
// The usual message has no unknown field, and is decoded once with
// unknown fields refused; only when that fails is it decoded again
// leniently and its field names listed (a third pass). Both ways give the
// same result (FuzzDecodeOnePass); the first halves the worker's decoding
// time.
func Decode(data []byte) (*Message, error) {
	if m, err := decode(data, true); err == nil {
		return m, nil
	}
	m, err := decode(data, false)
	if err != nil {
		return nil, err
	}
	m.Unknown = unknownFields(data)
	return m, nil
}

// decode parses data as one JSON object, refusing fields Message does not
// have when strict.
func decode(data []byte, strict bool) (*Message, error) {
	var m Message
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(&m); err != nil {
		return nil, invalid("", "bad JSON: %v", err)
	}
	if dec.More() {
		return nil, invalid("", "bad JSON: trailing data after the object")
	}
	return &m, nil
}

var (
	messageFields    = jsonFields(reflect.TypeFor[Message]())
	attachmentFields = jsonFields(reflect.TypeFor[Attachment]())
)

// jsonFields lists the JSON names of t's fields.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// unknownFields names the object's fields (and its attachments') that no
// field of Message (Attachment) takes, sorted.
func unknownFields(data []byte) []string {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return nil
	}
	var out []string
	for k, v := range top {
		if !slices.ContainsFunc(messageFields, func(f string) bool { return strings.EqualFold(f, k) }) {
			out = append(out, k)
			continue
		}
		if strings.EqualFold(k, "attachments") {
			var atts []map[string]json.RawMessage
			_ = json.Unmarshal(v, &atts)
			for _, a := range atts {
				for ak := range a {
					if !slices.ContainsFunc(attachmentFields, func(f string) bool { return strings.EqualFold(f, ak) }) {
						out = append(out, "attachments[]."+ak)
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Encode returns the JSON form of m.
func (m *Message) Encode() ([]byte, error) { return json.Marshal(m) }

// NewID returns a random message id, used when the producer gives none.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var (
	// accountRE matches an account alias: it is also a NATS subject token.
	accountRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	// headerNameRE is RFC 5322 §3.6.8 field-name: printable US-ASCII but ':'.
	headerNameRE = regexp.MustCompile(`^[!-9;-~]+$`)
)

// maxHeaderName is the longest name of a producer's header field: with
// ": " it fills a 78-character line (RFC 5322 §2.1.1). A field name
// cannot be folded, so an unbounded one made a line past 998.
const maxHeaderName = 76

// reservedHeaders are written by the renderer; a producer may not set them
// through Headers (they have fields of their own, or must stay ours).
var reservedHeaders = map[string]bool{
	"From": true, "Sender": true, "Reply-To": true, "To": true, "Cc": true, "Bcc": true,
	"Subject": true, "Date": true, "Message-Id": true, "Mime-Version": true,
	"Content-Type": true, "Content-Transfer-Encoding": true, "Return-Path": true,
	// A resent block's originator (RFC 5322 §3.6.6) is held to the From
	// policy in a raw message (renderRaw); here nothing would hold it.
	"Resent-From": true, "Resent-Sender": true,
}

// ValidAccount reports whether alias can name an account.
func ValidAccount(alias string) bool { return accountRE.MatchString(alias) }

// Validate checks everything that can be checked without the account
// registry. It fills ID when empty.
func (m *Message) Validate() error {
	if m.ID == "" {
		m.ID = NewID()
	}
	if err := checkLine("id", m.ID); err != nil {
		return err
	}
	if err := CheckID(m.ID); err != nil {
		return err
	}
	if len(m.ID) > 256 {
		return invalid("id", "longer than 256 characters")
	}
	if !ValidAccount(m.Account) {
		return invalid("account", "%q is not an account alias (lower-case letters, digits, '-' and '_')", m.Account)
	}
	if m.From != "" {
		if _, err := ParseAddress("from", m.From); err != nil {
			return err
		}
	}
	for _, list := range []struct {
		name  string
		addrs []string
	}{{"reply_to", m.ReplyTo}, {"to", m.To}, {"cc", m.Cc}, {"bcc", m.Bcc}} {
		for _, s := range list.addrs {
			a, err := ParseAddress(list.name, s)
			if err != nil {
				return err
			}
			if list.name != "reply_to" {
				if err := routable(list.name, a.Address); err != nil {
					return err
				}
			}
		}
	}
	if m.Body != nil {
		return m.validateBody()
	}
	if len(m.Raw) > 0 {
		return m.validateRaw()
	}
	n := len(m.To) + len(m.Cc) + len(m.Bcc)
	if n == 0 {
		return invalid("to", "no recipients (give at least one of to, cc, bcc)")
	}
	if n > MaxRecipients {
		return invalid("to", "%d recipients, more than a mailbox may send to in a day (%d)", n, MaxRecipients)
	}
	if err := checkLine("subject", m.Subject); err != nil {
		return err
	}
	for name, value := range m.Headers {
		if !headerNameRE.MatchString(name) {
			return invalid("headers", "%q is not a header field name", name)
		}
		if len(name) > maxHeaderName {
			return invalid("headers", "a header field name of %d characters, more than %d: %.40q…", len(name), maxHeaderName, name)
		}
		if reservedHeaders[canonical(name)] {
			return invalid("headers", "%s is set by the relay; use the message field instead", canonical(name))
		}
		if err := checkLine("headers."+name, value); err != nil {
			return err
		}
		// A field with a syntax of its own is written as given: RFC 2047
		// §5 allows encoded-words only in unstructured text, in comments
		// and in the phrase before an address, which the renderer cannot
		// find in a field it does not parse, and encoded whole its syntax
		// was corrupted (Autocrypt's keydata, DKIM-Signature's b=, a
		// Received trace). So it must be ASCII (RFC 5322 §2.2; UTF-8
		// header fields, RFC 6532, need SMTPUTF8, which the relay does
		// not use), a non-ASCII phrase or comment RFC 2047-encoded by the
		// producer, and no word may be longer than a line.
		if syn := syntaxOf(canonical(name)); syn != textSyntax {
			switch {
			case needsEncoding(value) && syn == idsOrURLs:
				return invalid("headers."+name, "holds message ids or URLs, which cannot be RFC 2047-encoded (RFC 2047 §5): give them in ASCII")
			case needsEncoding(value):
				return invalid("headers."+name, "is a structured field (a syntax of its own), which the relay cannot RFC 2047-encode (RFC 2047 §5): "+
					"give it in ASCII, with any non-ASCII phrase or comment already encoded")
			}
			for _, w := range strings.Split(value, " ") {
				if len(w) > lineHard-1 {
					return invalid("headers."+name, "a word of %d characters, longer than a header line holds (RFC 5322 §2.1.1)", len(w))
				}
			}
		}
	}
	for i, a := range m.Attachments {
		field := fmt.Sprintf("attachments[%d]", i)
		if a.Filename == "" {
			return invalid(field, "filename is empty")
		}
		if err := checkLine(field+".filename", a.Filename); err != nil {
			return err
		}
		if a.ContentType != "" {
			if err := checkLine(field+".content_type", a.ContentType); err != nil {
				return err
			}
			if _, err := attachmentType(a.ContentType); err != nil {
				return invalid(field+".content_type", "%v", err)
			}
		}
	}
	return nil
}

func (m *Message) validateBody() error {
	if len(m.Raw) > 0 || m.Text != "" || m.HTML != "" || m.Subject != "" || len(m.Headers) > 0 || len(m.Attachments) > 0 || m.From != "" || len(m.ReplyTo) > 0 {
		return invalid("body", "a stored body replaces raw, from, reply_to, subject, text, html, headers and attachments")
	}
	if err := m.Body.validate(); err != nil {
		return err
	}
	n := len(m.To) + len(m.Cc) + len(m.Bcc)
	if n == 0 {
		return invalid("to", "no recipients: a message with a stored body names its envelope in to, cc or bcc")
	}
	if n > MaxRecipients {
		return invalid("to", "%d recipients, more than a mailbox may send to in a day (%d)", n, MaxRecipients)
	}
	return nil
}

func (m *Message) validateRaw() error {
	if m.Text != "" || m.HTML != "" || m.Subject != "" || len(m.Headers) > 0 || len(m.Attachments) > 0 {
		return invalid("raw", "raw replaces subject, text, html, headers and attachments; give one or the other")
	}
	if len(m.Raw) > MaxSize {
		return tooBig("raw", "", int64(len(m.Raw)))
	}
	rcpts, err := m.Recipients()
	if err != nil {
		return err
	}
	if len(rcpts) == 0 {
		return invalid("to", "no recipients (give to/cc/bcc or To/Cc/Bcc fields in raw, Resent-To/Resent-Cc/Resent-Bcc when it has Resent- fields)")
	}
	if len(rcpts) > MaxRecipients {
		return invalid("to", "%d recipients, more than a mailbox may send to in a day (%d)", len(rcpts), MaxRecipients)
	}
	return nil
}

// Recipients returns the envelope recipients (bare addresses), in order,
// without duplicates.
func (m *Message) Recipients() ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(field string, addrs []*mail.Address) error {
		for _, a := range addrs {
			if err := deliverable(field, a.Address, a.Address); err != nil {
				return err
			}
			if err := routable(field, a.Address); err != nil {
				return err
			}
			k := strings.ToLower(a.Address)
			if !seen[k] {
				seen[k] = true
				out = append(out, a.Address)
			}
		}
		return nil
	}
	if len(m.To)+len(m.Cc)+len(m.Bcc) == 0 && len(m.Raw) > 0 {
		raw, err := NormalizeRaw(m.Raw) // a bare CR ends a line too
		if err != nil {
			return nil, err
		}
		raw = DropFromLines(raw) // as Render does
		msg, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			return nil, invalid("raw", "not an RFC 5322 message: %v", err)
		}
		// Every field of each name, not the first alone (Header.Get):
		// a second To or Bcc line, or an empty "Bcc:" before a full one,
		// must not drop recipients.
		for _, h := range RecipientFields(msg.Header) {
			for _, v := range msg.Header[h] {
				if strings.TrimSpace(v) == "" {
					continue // "Bcc:" with nobody names no one (RFC 5322 §3.6.3)
				}
				list, err := ReadAddressList(v)
				if err != nil {
					return nil, invalid("raw", "%s header: %v", h, err)
				}
				if err := add("raw", list); err != nil {
					return nil, err
				}
			}
		}
		return out, nil
	}
	for _, list := range []struct {
		name  string
		addrs []string
	}{{"to", m.To}, {"cc", m.Cc}, {"bcc", m.Bcc}} {
		for _, s := range list.addrs {
			a, err := ParseAddress(list.name, s)
			if err != nil {
				return nil, err
			}
			if err := add(list.name, []*mail.Address{a}); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// RecipientFields names the header fields whose addresses are a raw
// message's envelope recipients when none are given beside it (a
// producer's raw without to/cc/bcc, relay sendmail -t): To, Cc and Bcc,
// or Resent-To, Resent-Cc and Resent-Bcc alone once the message has any
// Resent- field. A message being resent (RFC 5322 §3.6.6: mutt's bounce,
// a saved message forwarded as it is) goes to its Resent- fields'
// addresses, not back to its original recipients, as Postfix's
// cleanup(8) and sendmail(8) do.
func RecipientFields(h mail.Header) []string {
	for k := range h {
		if strings.HasPrefix(canonical(k), "Resent-") {
			return []string{"Resent-To", "Resent-Cc", "Resent-Bcc"}
		}
	}
	return []string{"To", "Cc", "Bcc"}
}

// ParseAddress parses one RFC 5322 address ("Name <a@b>" or "a@b") and
// rejects anything that could break a header or an SMTP command.
func ParseAddress(field, s string) (*mail.Address, error) {
	if err := checkLine(field, s); err != nil {
		return nil, err
	}
	a, err := ReadAddress(s)
	if err != nil {
		return nil, invalid(field, "%q is not an address: %v", s, err)
	}
	if err := deliverable(field, s, a.Address); err != nil {
		return nil, err
	}
	return a, nil
}

// deliverable rejects a parsed address (from input s) that the SMTP
// envelope (RFC 5321 §4.1.2, MAIL FROM and RCPT TO) has no room for: a
// quoted local part may hold spaces, angle brackets or line breaks that
// would end or split the command.
//
// An address is also at most 254 octets: a path is at most 256 with its
// angle brackets (RFC 5321 §4.5.3.1.3), so a longer one can never be
// sent, and it cannot be folded either (RFC 5322 §2.1.1's 998).
func deliverable(field, s, addr string) error {
	if strings.ContainsAny(addr, " <>\"\\\r\n\x00") || !strings.Contains(addr, "@") {
		return invalid(field, "%q is not a deliverable address", s)
	}
	if len(addr) > maxAddress {
		return invalid(field, "an address of %d octets, longer than SMTP carries (%d, RFC 5321 §4.5.3.1.3): %.40q…", len(addr), maxAddress, addr)
	}
	return nil
}

// maxAddress is the longest address an SMTP path carries: 256 octets
// with its angle brackets (RFC 5321 §4.5.3.1.3).
const maxAddress = 254

// CheckID refuses an id that holds a control character (C0, DEL or C1:
// ESC [ … would drive the terminal of whoever lists dead letters), a
// bidirectional control or invalid UTF-8. Validate applies it to every
// message; it does not quote the id, so its error is safe to print.
func CheckID(id string) error {
	if i := termsafe.Index(id); i >= 0 {
		return invalid("id", "contains a control character or invalid UTF-8 at byte %d (ids are printed in terminals and logs)", i)
	}
	return nil
}

// checkLine rejects CR, LF and NUL in a value that becomes a header line.
func checkLine(field, v string) error {
	if i := strings.IndexAny(v, "\r\n\x00"); i >= 0 {
		return invalid(field, "contains a line break or NUL at byte %d (header injection)", i)
	}
	return nil
}

func canonical(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }
