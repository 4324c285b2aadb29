package message

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"time"
)

// FromPolicy says what happens to a From that is not the consented mailbox
// (docs/office365.md §5: Office 365 answers 550 5.7.60 to a From the mailbox may
// not send as).
type FromPolicy string

const (
	// PolicyRewrite makes the mailbox the From, keeps the display name and
	// moves the original address to Reply-To. The default.
	PolicyRewrite FromPolicy = "rewrite"
	// PolicyAllow lets From be the mailbox or an address of the send-as list.
	PolicyAllow FromPolicy = "allow"
	// PolicyReject lets From be the mailbox only.
	PolicyReject FromPolicy = "reject"
)

// Valid reports whether p names a policy ("" means the default).
func (p FromPolicy) Valid() bool {
	switch p {
	case "", PolicyRewrite, PolicyAllow, PolicyReject:
		return true
	}
	return false
}

// Sender is what rendering needs to know of the account that sends.
type Sender struct {
	Mailbox string
	Policy  FromPolicy
	SendAs  []string
}

// Rendered is a message ready for SMTP: the envelope and the bytes of DATA.
type Rendered struct {
	MailFrom string
	Rcpts    []string
	Data     []byte
	// Body, for a message whose content is in the body store: the
	// content after Data is that object from BodyOffset (past its own
	// header section, which Data replaces) to its end.
	Body       *BodyRef
	BodyOffset int64
}

// Batches splits the envelope recipients into groups of at most size, in
// order: one SMTP transaction each, all with the same Data (Office 365
// accepts at most RecipientsPerTransaction recipients per message). The
// split is deterministic, so a redelivered message yields the same batches
// and the relay can tell which of them were already sent.
func (r *Rendered) Batches(size int) [][]string {
	if size <= 0 || size > RecipientsPerTransaction {
		size = RecipientsPerTransaction
	}
	var out [][]string
	for rest := r.Rcpts; len(rest) > 0; {
		n := min(size, len(rest))
		out = append(out, rest[:n:n])
		rest = rest[n:]
	}
	return out
}

// Render applies the From policy and builds the RFC 5322 message with CRLF
// line endings. The Message-ID is derived from the account and message id,
// so a redelivered message carries the same Message-ID and recipients'
// clients thread or drop it as one.
func Render(m *Message, s Sender, now time.Time) (*Rendered, error) {
	if m.Body != nil {
		return nil, invalid("body", "the content is in the body store: render with RenderBody")
	}
	rcpts, err := m.Recipients()
	if err != nil {
		return nil, err
	}
	r := &Rendered{MailFrom: s.Mailbox, Rcpts: rcpts}
	if len(m.Raw) > 0 {
		// Raw messages are sent as they came but for line endings, the
		// From policy, Bcc, and a missing Date or Message-ID (raw.go).
		if r.Data, err = renderRaw(m, s, now); err != nil {
			return nil, err
		}
		if len(r.Data) > MaxSize {
			return nil, tooBig("raw", "", int64(len(r.Data)))
		}
		return r, nil
	}
	from, replyTo, err := applyPolicy(m, s)
	if err != nil {
		return nil, err
	}
	data, err := renderFields(m, from, replyTo, func(h headerWriter) {
		h.field("Date", now.Format(time.RFC1123Z))
		h.field("Message-ID", MessageID(m.Account, m.ID, s.Mailbox))
	})
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, tooBig("", " after encoding", int64(len(data)))
	}
	r.Data = data
	return r, nil
}

// Check is what a producer can know before queuing m: Validate, and for
// a raw message Render as the worker will, but for the account's From
// policy, which only relay serve knows (the rewrite policy, which
// refuses no From, stands in: what fails here fails for every account).
// A raw message with a line before its header section ends that is no
// header field, two From fields, a From that is not one address, or a
// line longer than SMTP carries with nowhere to fold is refused then, not
// dead-lettered later. The producer package's Check and relay sendmail
// call it.
func Check(m *Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if len(m.Raw) == 0 {
		return nil
	}
	_, err := Render(m, Sender{Mailbox: "postmaster@relay365.invalid", Policy: PolicyRewrite}, time.Time{})
	return err
}

// RenderUnsent renders a JSON message as its producer hands it over when
// its content goes to the body store (body.go): the From and Reply-To as
// given, for the worker to hold to the account's From policy, and no Date
// or Message-ID, which the worker adds as for every raw message (the same
// Message-ID Render would write). The envelope stays in m's to, cc and
// bcc.
func RenderUnsent(m *Message) ([]byte, error) {
	if len(m.Raw) > 0 {
		return NormalizeRaw(m.Raw)
	}
	var from *mail.Address
	if m.From != "" {
		f, err := ParseAddress("from", m.From)
		if err != nil {
			return nil, err
		}
		from = f
	}
	var replyTo []*mail.Address
	for _, a := range m.ReplyTo {
		ra, err := ParseAddress("reply_to", a)
		if err != nil {
			return nil, err
		}
		replyTo = append(replyTo, ra)
	}
	return renderFields(m, from, replyTo, func(headerWriter) {})
}

// CountedSize is a message's size as an account's limit counts it
// (account.Account.MaxMessageBytes): its content after encoding, as its
// producer hands it over, which is RenderUnsent's octets, and for a
// message in the body store the stored object's. The fields a worker adds
// when it renders (Date, Message-ID, the From policy's; a few hundred
// octets) are not counted, so a producer counts exactly what a worker
// checks.
func CountedSize(m *Message) (int64, error) {
	if m.Body != nil {
		return m.Body.Size, nil
	}
	raw, err := RenderUnsent(m)
	if err != nil {
		return 0, err
	}
	return int64(len(raw)), nil
}

// renderFields writes the JSON message's header section (From when from is
// not nil, then the fields dated writes) and body.
func renderFields(m *Message, from *mail.Address, replyTo []*mail.Address, dated func(headerWriter)) ([]byte, error) {
	var b bytes.Buffer
	h := headerWriter{&b}
	if from != nil {
		h.field("From", formatAddress(from))
	}
	if len(replyTo) > 0 {
		h.field("Reply-To", joinAddrs(replyTo))
	}
	if err := h.addrList("To", m.To); err != nil {
		return nil, err
	}
	if err := h.addrList("Cc", m.Cc); err != nil {
		return nil, err
	}
	if len(m.To) == 0 && len(m.Cc) == 0 {
		// Blind recipients alone: an empty group in To says so (RFC
		// 5322 §3.6.3 and the group syntax of §3.4), as sendmail and
		// Postfix write it; a message without any destination field is
		// what spam filters score (MISSING_HEADERS) into the junk folder.
		h.field("To", "undisclosed-recipients:;")
	}
	h.field("Subject", unstructured(m.Subject))
	dated(h)
	h.field("MIME-Version", "1.0")
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		name, v := textproto.CanonicalMIMEHeaderKey(k), m.Headers[k]
		if syntaxOf(name) == textSyntax {
			v = unstructured(v) // RFC 2047 §5(1); a structured field is written as given (Validate)
		}
		h.field(name, v)
	}
	if err := writeBody(&b, m); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// MessageID is the stable Message-ID header value for a message id.
func MessageID(account, id, mailbox string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + id))
	domain := "relay365.invalid"
	if at := strings.LastIndexByte(mailbox, '@'); at >= 0 && at < len(mailbox)-1 {
		domain = mailbox[at+1:]
	}
	return "<" + hex.EncodeToString(sum[:16]) + "@" + domain + ">"
}

// MailboxPlaceholder stands for the account's mailbox in a From that
// only gives a display name: "Backup job <mailbox@relay365.invalid>"
// renders as "Backup job <the mailbox>" under every From policy, with no
// Reply-To. relay sendmail writes it for -F NAME on a message with no
// From field and no -f, as sendmail(8) and Postfix's sendmail(1) make -F
// the display name of the From they generate; a producer does not know
// the mailbox. The .invalid top-level domain (RFC 2606 §2) can name no
// real address.
const MailboxPlaceholder = "mailbox@relay365.invalid"

func applyPolicy(m *Message, s Sender) (from *mail.Address, replyTo []*mail.Address, err error) {
	mailbox := &mail.Address{Address: s.Mailbox}
	for _, a := range m.ReplyTo {
		ra, err := ParseAddress("reply_to", a)
		if err != nil {
			return nil, nil, err
		}
		replyTo = append(replyTo, ra)
	}
	if m.From == "" {
		return mailbox, replyTo, nil
	}
	orig, err := ParseAddress("from", m.From)
	if err != nil {
		return nil, nil, err
	}
	if strings.EqualFold(orig.Address, s.Mailbox) {
		return orig, replyTo, nil
	}
	if strings.EqualFold(orig.Address, MailboxPlaceholder) {
		return &mail.Address{Name: orig.Name, Address: s.Mailbox}, replyTo, nil
	}
	switch s.Policy {
	case PolicyAllow:
		for _, a := range s.SendAs {
			if strings.EqualFold(a, orig.Address) {
				return orig, replyTo, nil
			}
		}
		return nil, nil, invalid("from", "%s is not the mailbox %s nor in its send-as list (from policy allow)", orig.Address, s.Mailbox)
	case PolicyReject:
		return nil, nil, invalid("from", "%s is not the mailbox %s (from policy reject)", orig.Address, s.Mailbox)
	default: // rewrite
		if len(replyTo) == 0 {
			replyTo = []*mail.Address{orig}
		}
		return &mail.Address{Name: orig.Name, Address: s.Mailbox}, replyTo, nil
	}
}

func writeBody(b *bytes.Buffer, m *Message) error {
	if len(m.Attachments) == 0 {
		return writeAlternative(b, m)
	}
	mw := multipart.NewWriter(b)
	if err := mw.SetBoundary(boundary(m, "mixed")); err != nil {
		return err
	}
	fold(b, "Content-Type", fmt.Sprintf("multipart/mixed; boundary=%q", mw.Boundary()))
	b.WriteString("\r\n")
	// The text part is itself a header block plus body: write it into the
	// first part with an empty MIME header of ours.
	var inner bytes.Buffer
	if err := writeAlternative(&inner, m); err != nil {
		return err
	}
	hdr, body, _ := bytes.Cut(inner.Bytes(), []byte("\r\n\r\n"))
	pw, err := mw.CreatePart(parseHeaderBlock(hdr))
	if err != nil {
		return err
	}
	pw.Write(body)
	for _, a := range m.Attachments {
		ct, err := attachmentType(a.ContentType)
		if err != nil {
			return invalid("attachments", "content_type %v", err)
		}
		ph := textproto.MIMEHeader{}
		ph.Set("Content-Type", foldValue("Content-Type", ct))
		ph.Set("Content-Disposition", attachmentDisposition(a.Filename))
		ph.Set("Content-Transfer-Encoding", "base64")
		pw, err := mw.CreatePart(ph)
		if err != nil {
			return err
		}
		writeBase64Lines(pw, a.Data)
	}
	return mw.Close()
}

// attachmentType is the Content-Type an attachment of type ct (a
// producer's content_type) is sent with: application/octet-stream when
// ct is empty, else ct written again by mime.FormatMediaType, so what
// goes into the header is a type/subtype and parameters (RFC 2045 §5.1)
// with nothing else: ParseMediaType alone passed white space and control
// characters around them, and a parameter in UTF-8 as 8-bit octets
// (FormatMediaType writes it as RFC 2231 §4 asks).
//
// An attachment is sent base64, which a composite type's body may not be
// (RFC 2045 §6.4, RFC 2046 §5.2.1: 7bit, 8bit or binary only), and a
// reader looks inside a multipart or message part for parts and fields
// it cannot find. Such an attachment (a saved .eml, which relay publish
// --attach types message/rfc822) goes as application/octet-stream: its
// name keeps its extension, by which clients open it.
func attachmentType(ct string) (string, error) {
	if ct == "" {
		return "application/octet-stream", nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "", err
	}
	typ, _, ok := strings.Cut(mt, "/")
	if !ok {
		return "", fmt.Errorf("%q is not a type/subtype", mt)
	}
	if typ == "multipart" || typ == "message" {
		return "application/octet-stream", nil
	}
	out := mime.FormatMediaType(mt, params)
	if out == "" {
		return "", fmt.Errorf("%q is not a media type", mt)
	}
	for _, l := range strings.Split("Content-Type: "+foldValue("Content-Type", out), "\r\n") {
		if len(l) > lineHard {
			return "", fmt.Errorf("a parameter too long for a header line (RFC 5322 §2.1.1)")
		}
	}
	return out, nil
}

// foldValue is value folded as fold writes it in a field called name,
// without the name: for a header multipart writes (RFC 5322 §2.2.3).
func foldValue(name, value string) string {
	var b bytes.Buffer
	fold(&b, name, value)
	v := strings.TrimSuffix(strings.TrimPrefix(b.String(), name+":"), "\r\n")
	return strings.TrimPrefix(v, " ")
}

// writeAlternative writes the Content-Type header block and body for the
// text and HTML parts: one part alone, or multipart/alternative with both.
func writeAlternative(b *bytes.Buffer, m *Message) error {
	switch {
	case m.HTML == "":
		writeQPPart(b, "text/plain; charset=utf-8", m.Text)
	case m.Text == "":
		writeQPPart(b, "text/html; charset=utf-8", m.HTML)
	default:
		mw := multipart.NewWriter(b)
		if err := mw.SetBoundary(boundary(m, "alt")); err != nil {
			return err
		}
		fold(b, "Content-Type", fmt.Sprintf("multipart/alternative; boundary=%q", mw.Boundary()))
		b.WriteString("\r\n")
		for _, p := range []struct{ ct, body string }{{"text/plain; charset=utf-8", m.Text}, {"text/html; charset=utf-8", m.HTML}} {
			w, err := mw.CreatePart(textproto.MIMEHeader{
				"Content-Type":              {p.ct},
				"Content-Transfer-Encoding": {"quoted-printable"},
			})
			if err != nil {
				return err
			}
			writeQP(w, p.body)
		}
		return mw.Close()
	}
	return nil
}

func writeQPPart(b *bytes.Buffer, ct, body string) {
	fmt.Fprintf(b, "Content-Type: %s\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", ct)
	writeQP(b, body)
}

// writeQP writes text quoted-printable (RFC 2045 §6.7) with every line
// break CRLF, a bare CR or LF included (RFC 2046 §4.1.1: CRLF is the
// line break of text). The line breaks are made CRLF before the encoder
// sees them: quotedprintable.Writer takes an LF after a bare CR for the
// end of a CRLF when an octet it escapes ("=", 8-bit, a control) comes
// between them, and drops that line break.
func writeQP(w io.Writer, text string) {
	if strings.IndexByte(text, '\r') >= 0 { // without CR, LF alone is a line break the encoder makes CRLF
		text = strings.ReplaceAll(text, "\r\n", "\n")
		text = strings.ReplaceAll(text, "\r", "\n")
	}
	qp := quotedprintable.NewWriter(w)
	qp.Write([]byte(text))
	qp.Close()
}

// writeBase64Lines writes base64 in lines of 76 characters (RFC 2045 §6.8).
func writeBase64Lines(w interface{ Write([]byte) (int, error) }, data []byte) {
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		w.Write([]byte(enc[:76] + "\r\n"))
		enc = enc[76:]
	}
	w.Write([]byte(enc + "\r\n"))
}

// parseHeaderBlock reads a header block the renderer wrote, folded lines
// included (RFC 5322 §2.2.3: a line that starts with white space goes on
// the field before it), for a part whose header multipart writes again.
func parseHeaderBlock(block []byte) textproto.MIMEHeader {
	h := textproto.MIMEHeader{}
	var fields []string
	for _, line := range strings.Split(string(block), "\r\n") {
		if (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) && len(fields) > 0 {
			fields[len(fields)-1] += "\r\n" + line // kept folded
			continue
		}
		fields = append(fields, line)
	}
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, ": "); ok {
			h.Add(k, v)
		}
	}
	return h
}

// boundary is derived from the content so rendering is deterministic (golden
// tests) while a producer cannot plant the boundary in its own body.
func boundary(m *Message, kind string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + m.ID + "\x00" + m.Text + "\x00" + m.HTML))
	return "relay365-" + kind + "-" + hex.EncodeToString(sum[:12])
}

type headerWriter struct{ b *bytes.Buffer }

// field writes "Name: value" folded (fold.go).
func (h headerWriter) field(name, value string) { fold(h.b, name, value) }

func (h headerWriter) addrList(name string, list []string) error {
	if len(list) == 0 {
		return nil
	}
	addrs := make([]*mail.Address, 0, len(list))
	for _, s := range list {
		a, err := ParseAddress(strings.ToLower(name), s)
		if err != nil {
			return err
		}
		addrs = append(addrs, a)
	}
	h.field(name, joinAddrs(addrs))
	return nil
}

func joinAddrs(addrs []*mail.Address) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = formatAddress(a)
	}
	return strings.Join(parts, ", ")
}

// formatAddress writes a as a mailbox (RFC 5322 §3.4). It is
// mail.Address.String except for two cases.
//
// String turns a display name that is not all printable ASCII into an
// encoded-word, and B-encodes it when it holds a character RFC 2047 §5(3)
// forbids inside an encoded-word in a phrase, but its list of those misses
// '\'. Q-encoding leaves '\' as it is, and no parser (net/mail included)
// reads the name back; such a name is B-encoded here, which uses only
// safe characters.
//
// String quotes a printable ASCII name whole, and a quoted-string folds
// only at its spaces: a name with a word too long for a line (a host
// list, a label set) made a line past 998 (RFC 5322 §2.1.1). Such a name
// is written as B encoded-words of at most 75 characters instead, which
// a reader joins back without the spaces between them (RFC 2047 §6.2).
func formatAddress(a *mail.Address) string {
	addr := (&mail.Address{Address: a.Address}).String()
	if a.Name == "" {
		return addr
	}
	encoded := strings.IndexFunc(a.Name, func(r rune) bool { return (r < ' ' && r != '\t') || r > '~' }) >= 0
	s := a.String()
	if encoded && strings.ContainsRune(a.Name, '\\') {
		s = mime.BEncoding.Encode("utf-8", a.Name) + " " + addr
	}
	name := strings.TrimSuffix(s, " "+addr)
	if slices.ContainsFunc(strings.Split(name, " "), func(w string) bool { return len(w) > lineSoft-1 }) {
		return strings.Join(encodedWords(a.Name), " ") + " " + addr
	}
	return s
}
