package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/crashpoint"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// DATA, streamed (docs/design.md §3.5). A session holds at most
// streamBuffer octets of a message. One that ends within them is handled
// whole (prepare): checked, then published inline or, past InlineMax,
// stored from that buffer. A longer one (prepareStream) must have its
// header section within the buffer: the same checks run on the header
// section alone, rendered as the worker renders a stored body
// (message.RenderBody renders the header section and streams the rest),
// and then the Received field, the buffer and the rest of DATA are copied
// through body.Store.Put, which makes the line endings CRLF in a small
// buffer of its own and stops at the account's size limit. A 35 MB
// message costs a session the buffer, not 35 MB.

// streamBuffer is the part of DATA a session holds in memory: InlineMax
// and room for a message that will go to the body store anyway to be
// handled whole.
const streamBuffer = message.InlineMax + 64<<10

// maxHeaderSection bounds the header section of a streamed message: it
// must end within the buffer, as the checks run on it before the rest is
// read. (The worker allows a stored body message.MaxHeaderSection.)
const maxHeaderSection = streamBuffer

// MaxReceivedHeader bounds the trace field the front door prepends
// (with a host name of at most message.MaxDomain octets).
const MaxReceivedHeader = 1024

func (ss *session) Data(r io.Reader) error {
	done := make(chan struct{})
	pipe, _ := r.(*io.PipeReader) // BDAT: go-smtp's goroutine feeds it
	ss.dataMu.Lock()
	ss.dataDone, ss.dataPipe = done, pipe
	ss.dataMu.Unlock()
	defer close(done) // Reset waits for it
	if ss.producer == nil {
		return errAuthRequired
	}
	if err := ss.stillValid(); err != nil {
		return err
	}
	err := ss.data(ss.conn.Hostname(), timedReader{r: r, conn: ss.conn.Conn(), timeout: ss.s.cfg.Timeout})
	if isConnError(err) {
		return ss.connFailed(err)
	}
	return err
}

// dataBlock is the most of DATA one read waits for (timedReader).
const dataBlock = 16 << 10

// timedReader applies the session timeout to each block of DATA instead
// of to the whole of it. go-smtp sets the connection's read deadline once,
// when it reads the DATA command line, so a message had to arrive whole
// within the timeout: a client sending 35 MB more slowly than 300 KB/s
// was cut off and answered 554. RFC 5321 §4.5.3.2.5 times each data block
// ("DATA Block: 3 minutes", awaiting each TCP SEND), not the message,
// and storeBody already lets a store take as long as the client keeps
// sending. Each read asks for at most dataBlock octets (go-smtp's DATA
// reader returns only once its buffer is full or the message ends), and
// the deadline is moved before it. With BDAT the reads come from go-smtp's
// pipe while it copies a chunk from the connection, so a chunk, too, may
// take as long as it keeps coming.
type timedReader struct {
	r       io.Reader
	conn    net.Conn
	timeout time.Duration
}

func (t timedReader) Read(p []byte) (int, error) {
	if len(p) > dataBlock {
		p = p[:dataBlock]
	}
	_ = t.conn.SetReadDeadline(time.Now().Add(t.timeout))
	return t.r.Read(p)
}

// isConnError reports whether err is the connection's failure inside
// DATA (a timeout, a reset, a client gone: anything but a reply, the
// end of BDAT by RSET or a closed session, or go-smtp's own limits).
func isConnError(err error) bool {
	var reply *smtp.SMTPError
	return err != nil && !errors.As(err, &reply) && !errors.Is(err, smtp.ErrDataReset)
}

// errDataTimeout: the client stopped sending inside DATA for the session
// timeout, or the connection failed there. RFC 5321 §4.2.2 421 (service
// not available, closing the transmission channel: the client tries
// again, §4.2.5), RFC 3463 §3.5 X.4.2 (bad connection).
var errDataTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
	Message: "Timeout or connection error while reading the message: nothing was queued, send it again"}

// connFailed answers a DATA whose reading failed and closes the
// connection. go-smtp answers an error of Data that is not an SMTP reply
// 554 5.0.0, permanent, which makes a client that is still there bounce
// mail that was never refused; and it then reads on, taking the rest of
// the message as commands. The reply is written here, before the close
// (go-smtp's own write of it then fails, unseen): after a read timeout the
// connection still writes. A client that is gone gets nothing either way.
// The network connection is closed, not go-smtp's Conn (whose lock its
// reset holds while Reset waits for Data); go-smtp's next read fails and
// it ends the session.
func (ss *session) connFailed(err error) error {
	ss.log.Info().Err(err).Int("smtp_code", 421).Msg("DATA not read to its end; message not queued, connection closed")
	c := ss.conn.Conn()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = fmt.Fprintf(c, "%d %d.%d.%d %s\r\n", errDataTimeout.Code, errDataTimeout.EnhancedCode[0], errDataTimeout.EnhancedCode[1], errDataTimeout.EnhancedCode[2], errDataTimeout.Message)
	_ = c.Close()
	return errDataTimeout
}

// data takes one message from DATA; helo is what the client said at EHLO.
func (ss *session) data(helo string, r io.Reader) error {
	label := ss.producerLabel()
	buf, full, err := readUpTo(r, streamBuffer)
	var (
		p   prepared
		res result
	)
	switch {
	case err == nil && !full: // it ended within the buffer
		p, res, err = ss.prepare(helo, buf)
	case err == nil: // more to come
		p, res, err = ss.prepareStream(helo, buf, r)
	case errors.Is(err, smtp.ErrDataTooLarge):
		// go-smtp's limit reader (Config.MaxMessageBytes).
		ss.s.metrics.message(label, resultTooLarge)
		return errTooLarge(fmt.Sprintf("message of more than %d bytes is over the size limit of %d bytes", ss.s.cfg.MaxMessageBytes, ss.s.cfg.MaxMessageBytes))
	case errors.Is(err, smtp.ErrTooLongLine):
		// A line past the listener's MaxLineLength (64 KiB; SMTP allows
		// 1,000 octets, RFC 5321 §4.5.3.1.6): go-smtp stops reading, and
		// the reply says why rather than its bare "too long a line".
		ss.s.metrics.message(label, resultInvalid)
		return errUnparseable(fmt.Sprintf("a line longer than %d bytes (SMTP allows 1,000)", maxLineLength))
	default: // the connection failed
		ss.s.metrics.message(label, resultUnavailable)
		return err
	}
	if err == nil {
		res, err = ss.publish(p)
	}
	ss.s.metrics.message(label, res)
	return err
}

// readUpTo reads r to its end or to n octets (full). The buffer grows
// with what comes, doubling, so a small message costs a small buffer.
func readUpTo(r io.Reader, n int) (buf []byte, full bool, err error) {
	buf = make([]byte, 0, 8<<10)
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), n-len(buf)))
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, false, nil
		}
		if err != nil {
			return buf, false, err
		}
	}
	return buf, true, nil
}

// publish queues a prepared message: 250 only after JetStream's PubAck.
// A body stored for a message whose publish fails is the sweeper's (the
// PubAck may be lost, not the message: deleting the body now could lose
// a queued message), but for a publish MAIL refused as full at its first
// attempt (queue.NotStored), whose body is deleted at once (dropBody).
func (ss *session) publish(p prepared) (result, error) {
	log := p.log
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	pub, err := queue.Publish(ctx, ss.s.deps.JS, p.acct.Alias, p.id, p.data)
	switch {
	case queue.IsFull(err):
		log.Warn().Err(err).Int("smtp_code", 452).Msg("MAIL stream full; message refused for now")
		if queue.NotStored(err) {
			ss.dropBody(p)
		}
		return resultFull, errQueueFull
	case err != nil:
		log.Warn().Err(err).Int("smtp_code", 451).Msg("message not queued; the client will try again")
		return resultUnavailable, errQueueDown
	}
	log.Info().Uint64("stream_seq", pub.Seq).Int("recipients", len(ss.rcpts)).Int64("bytes", p.size).Int("smtp_code", 250).Msg("queued from SMTP")
	return resultAccepted, nil
}

// dropBody deletes the body a message refused by a full MAIL named. The
// client sends it again, and each attempt stores its body anew: left to
// the sweep (a day), the bodies of a client retrying a large message
// against a full MAIL filled the disk MAIL shares with them. Only for a
// publish refused at its first attempt (queue.NotStored): the message id
// is this transaction's own, so no copy of it can be in MAIL.
func (ss *session) dropBody(p prepared) {
	m, err := message.Decode(p.data)
	if err != nil || m.Body == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.PublishTimeout)
	defer cancel()
	store, err := body.Open(ctx, ss.s.deps.JS)
	if err == nil {
		err = store.Delete(ctx, m.Body.Object)
	}
	if err != nil {
		p.log.Warn().Err(err).Str("body", m.Body.Object).Msg("body of a message refused by a full MAIL not deleted; the sweep will remove it")
	}
}

// prepared is a message ready to publish.
type prepared struct {
	acct *account.Account
	id   string
	data []byte // the encoded message.Message
	size int64  // the message's size as stored: the Received field and the content, normalized
	log  zerolog.Logger
}

// prepare is the work before the publish for a message held whole: the
// account's rules (check), the account's size limit, and the encoding,
// its content going to the body store when the JSON would pass
// InlineMax; helo is what the client said at EHLO. An error is the reply
// to give.
func (ss *session) prepare(helo string, raw []byte) (prepared, result, error) {
	raw, err := message.NormalizeRaw(raw)
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	// A line of the header section that is not a header field starts the
	// body, and an empty DATA is an empty header section and body, as for
	// relay sendmail and Postfix (message.StartBody). A field name
	// followed by white space before its colon (RFC 5322 §4.5.3's
	// obsolete syntax, "Subject : x") is written without it, as relay
	// sendmail does (message.MendFieldNames): net/mail refused it.
	raw = message.ReadAsSendmail(raw)
	c, res, err := ss.check(helo, raw)
	if err != nil {
		return prepared{}, res, err
	}
	if c.sent > c.acct.SizeLimit() {
		return prepared{}, resultTooLarge, c.tooLarge(c.sent, false)
	}
	data, inline, err := message.EncodeInline(c.m)
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	if !inline {
		// Too large for a NATS message: the content goes to the body
		// store, the message names it (internal/body).
		if data, res, err = ss.storeBody(c, bytes.NewReader(c.m.Raw), nil); err != nil {
			return prepared{}, res, err
		}
	}
	return prepared{acct: c.acct, id: c.m.ID, data: data, size: int64(len(c.m.Raw)), log: c.log}, "", nil
}

// prepareStream is prepare for a message longer than the buffer: buf is
// its first streamBuffer octets, rest the remainder of DATA. The header
// section must end within buf; it is checked alone, then the whole goes
// to the body store as it is read.
func (ss *session) prepareStream(helo string, buf []byte, rest io.Reader) (prepared, result, error) {
	in := &dataReader{r: rest}
	norm, err := message.NormalizeRaw(buf) // a copy of buf only when line endings need it
	if err != nil {
		return prepared{}, resultInvalid, errUnparseable(err.Error())
	}
	if mended := message.ReadAsSendmail(norm); !bytes.Equal(mended, norm) && bytes.Equal(norm, buf) {
		// A line of the header section that is not a header field
		// starts the body, and a field name's white space before its
		// colon goes (as in prepare). Mended only where buf is
		// already CRLF (as SMTP sends it): normalized, its last CR
		// could be the half of a CRLF that rest goes on with.
		norm, buf = mended, mended
	}
	head, err := message.ReadHeaderSection(bytes.NewReader(norm))
	if err != nil {
		// No end of the header section within the buffer. A message
		// that is too large as well learns that first (the relay's own
		// limit: no account is known without a header).
		if in.drain(); errors.Is(in.err, smtp.ErrDataTooLarge) {
			return prepared{}, resultTooLarge, errTooLarge(fmt.Sprintf("message of more than %d bytes is over the size limit of %d bytes", ss.s.cfg.MaxMessageBytes, ss.s.cfg.MaxMessageBytes))
		}
		ss.log.Info().Int("smtp_code", 554).Int("header_limit", maxHeaderSection).Msg("SMTP message refused: header section too long")
		return prepared{}, resultInvalid, errHeaderTooLarge
	}
	c, res, err := ss.check(helo, head)
	if err != nil {
		return prepared{}, res, err
	}
	trace := c.m.Raw[:c.trace]
	data, res, err := ss.storeBody(c, io.MultiReader(bytes.NewReader(trace), bytes.NewReader(buf), in), in)
	if err != nil {
		return prepared{}, res, err
	}
	return prepared{acct: c.acct, id: c.m.ID, data: data, size: int64(len(trace)+len(buf)) + in.n, log: c.log}, "", nil
}

// checked is a message that passed the account's rules, before its
// content is encoded or stored.
type checked struct {
	acct  *account.Account
	m     *message.Message // Raw: the trace prefix, then the message or (streamed) its header section
	trace int              // the length of the Received field, and of a Date field the message lacked, at the start of m.Raw
	sent  int64            // m.Raw's size as the worker will send it (rendered)
	log   zerolog.Logger
}

// check runs the account's rules on raw (CRLF line endings), a whole
// message or the header section of one: the account is picked (by the
// envelope sender at MAIL, else the From field, else the producer's
// first), the envelope validated, and the Received field added; then it
// is rendered as the worker will render it, with the account's From
// policy, so a message that could never go is refused now, not
// dead-lettered later. The worker renders a stored body's header section
// alone (message.RenderBody), which is what a streamed raw is.
func (ss *session) check(helo string, raw []byte) (checked, result, error) {
	if len(ss.rcpts) == 0 {
		// go-smtp answers DATA without a recipient itself; this keeps the
		// message's own To, Cc and Bcc fields from standing in for the
		// envelope (message.Validate's rule for producers' raw messages).
		return checked{}, resultInvalid, errNoRecipients
	}
	hdr, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return checked{}, resultInvalid, errUnparseable(err.Error())
	}
	acct := ss.acct
	if acct == nil {
		if from, err := message.ReadAddress(hdr.Header.Get("From")); err == nil {
			if acct, err = ss.pick(from.Address); err != nil {
				return checked{}, resultNotAllowed, err
			}
		}
	}
	if acct == nil {
		if acct, err = ss.first(); err != nil {
			ss.log.Warn().Err(err).Int("smtp_code", 451).Msg("message not queued: none of the producer's accounts is connected")
			return checked{}, resultUnavailable, err
		}
	}
	id := message.NewID()
	trace := ss.received(id, helo)
	if _, ok := hdr.Header["Date"]; !ok {
		// The origination date is when the client handed the message
		// over (RFC 5322 §3.6.1; RFC 6409 §8.2: the MSA may add a missing
		// Date). Added here, after the Received field, not by the worker
		// at each rendering: that would date the message hours late after
		// a pause, and differently at each delivery.
		trace = fmt.Appendf(trace, "Date: %s\r\n", ss.s.deps.Clock.Now().Format(time.RFC1123Z))
	}
	m := &message.Message{ID: id, Account: acct.Alias, To: ss.rcpts, Raw: append(append(make([]byte, 0, len(trace)+len(raw)), trace...), raw...)}
	log := ss.log.With().Str("account", acct.Alias).Str("msg_id", id).Logger()
	if ids := hdr.Header["Message-Id"]; len(ids) > 1 || len(ids) == 1 && !message.ValidMsgID(ids[0]) {
		// The worker replaces it when it renders the message (RFC 6409
		// §8.3, message.ValidMsgID); the old value is in the log, for
		// whoever looks for the message by it.
		old := make([]string, len(ids))
		for i, v := range ids {
			old[i] = ReplyText(v)
		}
		log.Info().Strs("replaced_message_id", old).Msg("malformed Message-ID field: the message leaves with the relay's (RFC 6409 §8.3)")
	}
	if err := m.Validate(); err != nil {
		log.Info().Err(err).Int("smtp_code", 554).Msg("SMTP message refused")
		return checked{}, resultInvalid, errUnparseable(err.Error())
	}
	r, err := message.Render(m, message.Sender{Mailbox: acct.Mailbox, Policy: acct.FromPolicy, SendAs: acct.SendAs}, ss.s.deps.Clock.Now())
	if err != nil {
		var (
			inv *message.Invalid
			tl  *message.TooLarge
		)
		switch {
		case errors.As(err, &inv) && (inv.Field == "from" || inv.Field == "sender"):
			log.Info().Err(err).Int("smtp_code", 550).Msg("SMTP message refused by the account's From policy")
			return checked{}, resultNotAllowed, errNotAllowed(err.Error())
		case errors.As(err, &tl): // over 35 MB once rendered: RFC 3463 §3.4's 5.3.4
			log.Info().Err(err).Int("smtp_code", 552).Msg("SMTP message refused: too large")
			return checked{}, resultTooLarge, errTooLarge(err.Error())
		}
		log.Info().Err(err).Int("smtp_code", 554).Msg("SMTP message refused")
		return checked{}, resultInvalid, errUnparseable(err.Error())
	}
	return checked{acct: acct, m: m, trace: len(trace), sent: int64(len(r.Data)), log: log}, "", nil
}

// storeLimit is how many octets of content (the Received field included)
// the body store may take for c: the account's size limit, less what
// rendering adds to the header section (m.Raw) or plus what it removes.
// A body of that size renders (message.Rendered.Size) to the limit.
func (c checked) storeLimit() int64 { return c.acct.SizeLimit() - c.sent + int64(len(c.m.Raw)) }

// tooLarge is the 552 for a message of size octets as it would be sent
// (at least that many when atLeast), logged.
func (c checked) tooLarge(size int64, atLeast bool) error {
	limit := c.acct.SizeLimit()
	c.log.Info().Int64("size", size).Int64("limit", limit).Int("smtp_code", 552).Msg("SMTP message refused: over the account's size limit")
	tl := &body.TooLarge{Size: size, Limit: limit, AtLeast: atLeast, Account: c.acct.Alias}
	return errTooLarge(tl.Error() + " as sent (max_message_bytes)")
}

// storeBody stores c's content, read from content, and returns the JSON
// of the message that names it, with the envelope of the session. in is
// the rest of DATA within content (nil when content is in memory): past
// the account's limit it is read to its end, so the 552 says the size. A
// body that fails midway is deleted (body.Put); one stored whose publish
// then fails is the sweeper's.
func (ss *session) storeBody(c checked, content io.Reader, in *dataReader) ([]byte, result, error) {
	// The store may take as long as the client takes to send; it fails
	// when neither side moves for the session timeout and the publish
	// timeout, so a NATS that stops answering ends it.
	idle := ss.s.cfg.Timeout + ss.s.cfg.PublishTimeout
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stall := time.AfterFunc(idle, cancel)
	defer stall.Stop()
	if in != nil {
		in.progress = func() { stall.Reset(idle) }
	}
	store, err := body.Open(ctx, ss.s.deps.JS)
	if err != nil {
		c.log.Warn().Err(err).Int("smtp_code", 451).Msg("body store unavailable; message not queued")
		return nil, resultUnavailable, errQueueDown
	}
	data, err := store.StoreMessage(ctx, c.m, content, c.storeLimit())
	if err == nil {
		// Stored, not yet published: a crash here leaves a body no
		// message names (the sweeper's), and the client no reply.
		crashpoint.Hit(crashpoint.IngressBodyStored)
		return data, "", nil
	}
	var (
		tl  *body.TooLarge
		inv *message.Invalid
	)
	switch {
	case in != nil && errors.Is(in.err, smtp.ErrDataTooLarge):
		// go-smtp's own limit, past the account's: as much as was read.
		return nil, resultTooLarge, c.tooLarge(c.sent-int64(len(c.m.Raw))+int64(c.trace+streamBuffer)+in.n, true)
	case errors.As(err, &tl):
		if in == nil {
			return nil, resultTooLarge, c.tooLarge(tl.Size, true)
		}
		in.drain()
		size := c.sent - int64(len(c.m.Raw)) + int64(c.trace+streamBuffer) + in.n
		return nil, resultTooLarge, c.tooLarge(size, in.err != nil)
	case errors.As(err, &inv):
		c.log.Info().Err(err).Int("smtp_code", 554).Msg("SMTP message refused")
		return nil, resultInvalid, errUnparseable(err.Error())
	case in != nil && in.err != nil:
		// The client went away or stopped sending: no reply reaches it.
		c.log.Info().Err(in.err).Msg("DATA ended early; message not queued")
		return nil, resultUnavailable, in.err
	}
	if queue.IsFull(err) {
		// No room in the body store (its limit, or the disk it shares
		// with MAIL): the queue is full, as a refused publish is.
		c.log.Warn().Err(err).Int("smtp_code", 452).Msg("body store full; message refused for now")
		return nil, resultFull, errQueueFull
	}
	c.log.Warn().Err(err).Int("smtp_code", 451).Msg("body not stored; message not queued")
	return nil, resultUnavailable, errQueueDown
}

// dataReader is the rest of DATA past the buffer: it counts what it
// reads, keeps the error that ended it, and tells the store's stall timer
// that the client is sending.
type dataReader struct {
	r        io.Reader
	n        int64
	err      error
	progress func()
}

func (d *dataReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if err != nil && err != io.EOF {
		d.err = err
	}
	if n > 0 && d.progress != nil {
		d.progress()
	}
	return n, err
}

// drain reads the rest of DATA, counting it, so a refusal can say the
// message's size (go-smtp would discard it anyway before replying).
func (d *dataReader) drain() {
	d.progress = nil
	_, _ = io.Copy(io.Discard, d)
}

// received returns the trace field every SMTP server adds (RFC 5321
// §4.4; "ESMTPSA": ESMTP with STARTTLS or TLS and AUTH, RFC 3848).
func (ss *session) received(id, helo string) []byte {
	// Of the EHLO argument, only what a domain or an address literal is
	// made of (RFC 5321 §4.1.2, §4.1.3; '_' for printers' NetBIOS names):
	// FROM takes one of those (§4.4), and a quote, backslash or
	// parenthesis would begin a quoted-string or comment of RFC 5322's
	// Received syntax (§3.6.7) that runs over the rest of the field.
	helo = strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
			return r
		case r == '.', r == '-', r == '_', r == '[', r == ']', r == ':':
			return r
		}
		return -1
	}, helo)
	// A domain is at most 255 octets (RFC 5321 §4.5.3.1.2), and so is
	// what is kept of the name: a longer one, whole, made the field a
	// line past 998 octets that cannot be folded (RFC 5322 §2.1.1), and
	// every message of the session was refused for it. With the address
	// literal (at most 45 octets), the host name and the id, the field
	// stays within MaxReceivedHeader.
	helo = helo[:min(len(helo), message.MaxDomain)]
	// The client's address as an address literal (RFC 5321 §4.1.3): an
	// IPv6 address is tagged "IPv6:". It also stands for a HELO name that
	// had nothing left: FROM needs a domain or an address literal (§4.4).
	lit := "[" + ss.remote + "]"
	if strings.Contains(ss.remote, ":") {
		lit = "[IPv6:" + ss.remote + "]"
	}
	if helo == "" {
		helo = lit
	}
	return fmt.Appendf(nil, "Received: from %s (%s)\r\n\tby %s (Relay365) with ESMTPSA id %s;\r\n\t%s\r\n",
		helo, lit, ss.s.cfg.Hostname, id, ss.s.deps.Clock.Now().Format(time.RFC1123Z))
}
