// Package smtpclient is the relay's SMTP submission client: one connection
// to a submission server (Office 365's smtp.office365.com:587), upgraded
// with STARTTLS, authenticated once, then carrying many mail transactions.
//
// # Why our own client
//
// go-smtp's client sends each command and waits for its reply. Office 365
// offers PIPELINING (RFC 2920), and a relay in front of it spends its time
// in round trips: MAIL, RCPT per recipient, DATA, the content, and the RSET
// that clears a failed transaction are five or more. With PIPELINING this
// client sends [RSET,] MAIL, every RCPT and DATA in one write and reads
// their replies in order (RFC 2920 §3.1), then sends the content: two
// round trips per message whatever the number of recipients. The server
// side of the project (the fake Office 365) stays on go-smtp, and replies
// come back as go-smtp's *smtp.SMTPError, so the relay classifies one type.
//
// CHUNKING (RFC 3030, BDAT) would save one more round trip, but with BDAT
// pipelined behind the RCPTs a server that refused one recipient and took
// another delivers the message to a part of its recipients whatever the
// client would have wanted. With DATA the client sees every RCPT reply
// before any content leaves, and decides: SendContent sends to all of its
// recipients or to none; SendSome goes on to the accepted recipients past
// refusals its caller says concern those recipients alone, and returns
// them.
//
// # Failure semantics
//
// Every error a method returns is an *Error naming the command it failed
// at; its Err is a *smtp.SMTPError when the server replied, or the network
// or TLS error when it did not. Until the content of a message is sent
// (Command "message"), nothing was delivered: the caller may run the same
// transaction on another connection. After the content, an error without a
// reply (a timeout, a dropped connection) leaves it unknown whether the
// server accepted the message.
//
// A connection whose replies can no longer be matched to its commands — a
// reply that did not come in time or could not be read, a failed write, a
// refused RSET, a transaction abandoned after 354, a cancelled context — is
// closed at once and the Client reports Broken: a late reply must never be
// read as the answer to the next transaction's commands.
//
// STARTTLS is mandatory (RFC 3207): a server that does not offer it gets
// no AUTH and no mail, ever (ErrNoStartTLS); the TLS configuration is the
// caller's (the relay asks for TLS 1.2 or newer).
//
// A Client is used by one goroutine at a time. A cancelled context closes
// the connection: the Client is then unusable.
package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config is how a Client talks.
type Config struct {
	LocalName      string        // the EHLO name; default "localhost"
	TLS            *tls.Config   // for STARTTLS; required
	CommandTimeout time.Duration // for each exchange; default 60s
	DataTimeout    time.Duration // for the reply to the end of the content; default 5m
}

// ErrNoStartTLS: the server does not offer STARTTLS, so nothing is sent.
var ErrNoStartTLS = errors.New("server does not offer STARTTLS; refusing to authenticate in plaintext")

// ErrNotSendable marks a transaction this server can never take as it is
// (an address that needs SMTPUTF8 the server lacks, 8-bit content without
// 8BITMIME, a line break in an address). Nothing was sent.
var ErrNotSendable = errors.New("not sendable")

// Error is a failed command.
type Error struct {
	// Command is the SMTP command whose reply was refused or never came:
	// "greeting", "EHLO", "STARTTLS", "AUTH", "RSET", "MAIL", "RCPT", "DATA",
	// "message" (the content and the reply to its end), "QUIT".
	Command string
	Err     error // *smtp.SMTPError for a reply
	// Accepted is, for a refused RCPT, how many recipients of the
	// transaction the server accepted before it. A 452 (or 552) there
	// may be the server's limit on recipients per transaction (RFC 5321
	// §4.5.3.1.10); the recipients accepted say what the limit is.
	Accepted int
}

func (e *Error) Error() string { return e.Command + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Reply returns the server's refusal, nil when the server did not reply.
func (e *Error) Reply() *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(e.Err, &se) {
		return se
	}
	return nil
}

// Client is one SMTP connection after STARTTLS.
type Client struct {
	conn   net.Conn
	r      *textproto.Reader
	br     *bufio.Reader
	w      *bufio.Writer
	cfg    Config
	ext    map[string]string // EHLO keywords (upper case) → parameters
	lim    *replyLimit       // bounds what one reply may bring in
	dirty  bool              // a transaction may be open: RSET first (RFC 5321 §4.1.1.5)
	broken bool              // closed: out of step with the server, or gone
}

// Broken reports whether the connection was closed because it can no
// longer be trusted: a reply that never came (so a late one would be read
// as the next command's), a write that failed, a refused RSET, a
// transaction abandoned after 354, a cancelled context. Every later call
// fails without writing.
func (c *Client) Broken() bool { return c.broken }

// lost closes the connection for good and returns err as name's *Error.
func (c *Client) lost(name string, err error) error {
	c.broken = true
	c.conn.Close()
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Command: name, Err: err}
}

// StartTLS takes a fresh connection to a submission server: it reads the
// greeting, sends EHLO, and upgrades with STARTTLS if (and only if) the
// server offers it, then sends EHLO again inside TLS (RFC 3207 §4.2). The
// TLS handshake runs before StartTLS returns, so a certificate problem is
// reported here, before any credential is sent. On error conn is closed.
func StartTLS(ctx context.Context, conn net.Conn, cfg Config) (*Client, error) {
	if cfg.TLS == nil {
		conn.Close()
		return nil, errors.New("smtpclient: Config.TLS is required")
	}
	if cfg.LocalName == "" {
		cfg.LocalName = "localhost"
	}
	cfg.CommandTimeout = durationOr(cfg.CommandTimeout, 60*time.Second)
	cfg.DataTimeout = durationOr(cfg.DataTimeout, 5*time.Minute)
	c := newClient(conn, cfg)
	err := c.guard(ctx, cfg.CommandTimeout, func() error {
		if _, err := c.expect("greeting", 220); err != nil {
			return err
		}
		if err := c.hello(); err != nil {
			return err
		}
		if _, ok := c.ext["STARTTLS"]; !ok {
			return &Error{Command: "STARTTLS", Err: ErrNoStartTLS}
		}
		if err := c.cmd("STARTTLS", 220, "STARTTLS"); err != nil {
			return err
		}
		if c.br.Buffered() > 0 {
			// Plaintext after the 220 would be read as if it came
			// inside TLS: a command injection attempt (RFC 3207 §6).
			return c.lost("STARTTLS", errors.New("server sent data after its STARTTLS reply"))
		}
		tc := tls.Client(conn, cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Command: "STARTTLS", Err: err}
		}
		// RFC 3207 §4.2: forget what was learnt before TLS.
		c.setConn(tc)
		return c.hello()
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func newClient(conn net.Conn, cfg Config) *Client {
	c := &Client{cfg: cfg}
	c.setConn(conn)
	return c
}

func (c *Client) setConn(conn net.Conn) {
	c.conn = conn
	c.lim = &replyLimit{r: conn, n: maxReplyBytes}
	c.br = bufio.NewReader(c.lim)
	c.r = textproto.NewReader(c.br)
	c.w = bufio.NewWriter(conn)
	c.ext = nil
}

// Pipelining reports whether transactions are pipelined (the server offered
// PIPELINING).
func (c *Client) Pipelining() bool {
	_, ok := c.ext["PIPELINING"]
	return ok
}

// Auth authenticates with a SASL mechanism. The initial response goes on
// the AUTH line (RFC 4954 §4); a challenge (334) is answered by the
// mechanism until the server's final reply.
func (c *Client) Auth(ctx context.Context, a sasl.Client) error {
	return c.guard(ctx, c.cfg.CommandTimeout, func() error {
		mech, resp, err := a.Start()
		if err != nil {
			return &Error{Command: "AUTH", Err: err}
		}
		line := "AUTH " + mech
		var initial []byte // sent after the server's first, empty challenge
		if resp != nil {
			// RFC 4954 §4: the initial response goes on the AUTH line
			// ("=" for an empty one) unless the line would pass SMTP's
			// 512 octets, CRLF included (RFC 5321 §4.5.3.1.4); then the
			// client MUST send it after an empty 334 instead (RFC 4422
			// §5.1). An Office 365 access token makes an XOAUTH2 response
			// of 2-3 KB: Office 365 tolerates the long line, servers
			// that keep to the limit answer 500 5.5.2.
			if withIR := line + " " + encode64(resp); len(withIR)+2 <= maxCommandLine {
				line = withIR
			} else {
				initial = resp
			}
		}
		var cancelled error
		for {
			c.write(line)
			if err := c.flush("AUTH"); err != nil {
				return err
			}
			r, err := c.reply("AUTH")
			if err != nil {
				return err
			}
			switch {
			case r.code == 235 && cancelled == nil:
				return nil
			case r.code == 334 && cancelled != nil, r.code == 235:
				// After "*" the server must end the exchange with an
				// error (RFC 4954 §4); it did not.
				return c.lost("AUTH", fmt.Errorf("server went on after the exchange was cancelled: %w", cancelled))
			case r.code != 334:
				return &Error{Command: "AUTH", Err: r.err()}
			}
			if initial != nil {
				// The server's empty challenge that asks for the initial
				// response held back (RFC 4422 §5.1).
				line, initial = base64.StdEncoding.EncodeToString(initial), nil
				continue
			}
			challenge, err := base64.StdEncoding.DecodeString(r.text)
			if err == nil {
				resp, err = a.Next(challenge)
			}
			if err != nil {
				cancelled = err
				line = "*" // cancel the exchange (RFC 4954 §4)
				continue
			}
			line = base64.StdEncoding.EncodeToString(resp)
		}
	})
}

// maxCommandLine is the longest command line, CRLF included (RFC 5321
// §4.5.3.1.4).
const maxCommandLine = 512

func encode64(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// Send runs one mail transaction (RFC 5321 §3.3): MAIL FROM, RCPT TO for
// each recipient, DATA, the content. data is the message with CRLF line
// endings; it is dot-stuffed here (RFC 5321 §4.5.2).
//
// With PIPELINING the commands up to DATA go in one write and their replies
// are read in order, every one of them (RFC 2920 §3.1); the first refusal
// is the error. The content is sent only when every command was accepted:
// if DATA was accepted (354) after a refused RCPT, the connection is closed
// instead, since the server discards a transaction whose content never
// ended (RFC 5321 §3.8), and a message goes to all of its recipients or to
// none (SendSome lets it go to part of them). Without PIPELINING each
// command waits for its reply.
func (c *Client) Send(ctx context.Context, from string, rcpts []string, data []byte) error {
	return c.SendContent(ctx, from, rcpts, Bytes(data))
}

// SendContent is Send for content read from a reader (Content), opened
// only once every command before it was accepted. A failure to read it is
// a *ContentError inside the *Error of the "message" stage; the
// connection is then closed without ending the content, so the server
// discards the transaction (RFC 5321 §3.8): nothing is delivered.
func (c *Client) SendContent(ctx context.Context, from string, rcpts []string, content Content) error {
	_, err := c.SendSome(ctx, from, rcpts, content, nil)
	return err
}

// Refused is a recipient the server refused at RCPT while the transaction
// went on to the recipients it accepted (SendSome).
type Refused struct {
	Rcpt  string
	Reply *smtp.SMTPError
}

// SendSome is SendContent for a transaction that may go to part of its
// recipients: a RCPT refused with a reply skip accepts (the caller's
// judgement that the refusal concerns that recipient alone, such as a
// permanent "no such user" or a temporary "mailbox busy") does not end
// the transaction. A 421 is never skipped: the server closes the
// connection (RFC 5321 §3.8). If at least
// one recipient was accepted, the content goes to those (RFC 5321 §3.3:
// the server delivers to the recipients it accepted) and the skipped ones
// are returned, in order, with their replies; the caller reports them
// (RFC 5321 §6.1, §4.2.5). If none was accepted, the first refusal is the
// error, as with SendContent (the first temporary one, if any: the
// transaction may still go later). A refusal skip does not accept ends the
// transaction as before: nothing is sent to anyone. skip nil accepts
// none.
func (c *Client) SendSome(ctx context.Context, from string, rcpts []string, content Content, skip func(*smtp.SMTPError) bool) ([]Refused, error) {
	cmds, err := c.transaction(from, rcpts, content)
	if err != nil {
		return nil, err
	}
	var skipped []Refused
	var firstSkipped error // with none accepted, the error: a temporary refusal if there is one
	firstCode := 0
	// skipRcpt records a refused RCPT that skip accepts.
	skipRcpt := func(cmd command, r reply) bool {
		if cmd.name != "RCPT" || skip == nil || r.code < 400 || r.code >= 600 || r.code == 421 {
			return false
		}
		se := r.err()
		if !skip(se) {
			return false
		}
		skipped = append(skipped, Refused{Rcpt: cmd.arg, Reply: se})
		if firstSkipped == nil || firstCode >= 500 && r.code < 500 {
			// A recipient refused for now makes the whole
			// transaction worth trying again later.
			firstSkipped, firstCode = &Error{Command: "RCPT", Err: se}, r.code
		}
		return true
	}
	err = c.guard(ctx, c.cfg.CommandTimeout, func() error {
		c.dirty = true
		accepted := 0 // RCPTs accepted before the first refusal
		refusal := func(cmd command, err error) error {
			if cmd.name == "RCPT" {
				var e *Error
				if errors.As(err, &e) {
					e.Accepted = accepted
				}
			}
			return err
		}
		if !c.Pipelining() {
			for _, cmd := range cmds {
				if cmd.name == "DATA" && accepted == 0 && firstSkipped != nil {
					// Every recipient refused: no DATA.
					return firstSkipped
				}
				c.write(cmd.line)
				if err := c.flush(cmd.name); err != nil {
					return err
				}
				r, err := c.reply(cmd.name)
				if err != nil {
					return err
				}
				if !accepts(cmd.name, cmd.want, r.code) {
					if skipRcpt(cmd, r) {
						continue
					}
					return c.afterRefusal(refusal(cmd, &Error{Command: cmd.name, Err: r.err()}))
				}
				if cmd.name == "RCPT" {
					accepted++
				}
			}
			return nil
		}
		// At most maxGroup commands go before their replies are read:
		// the server's replies to a long group must not fill the
		// client's receive buffer while the client is still writing
		// (RFC 2920 §3.1 warns of that deadlock).
		var refused error
		for len(cmds) > 0 {
			group := cmds[:min(len(cmds), maxGroup)]
			cmds = cmds[len(group):]
			for _, cmd := range group {
				c.write(cmd.line)
			}
			if err := c.flush(group[0].name); err != nil {
				return err
			}
			for _, cmd := range group {
				r, err := c.reply(cmd.name)
				if err != nil {
					// The rest of the replies may still come and
					// would be read as the next transaction's:
					// reply closed the connection. A refusal read
					// before says more than the silence after it.
					if refused != nil {
						return refused
					}
					return err
				}
				switch {
				case refused != nil:
				case cmd.name == "DATA" && accepted == 0 && firstSkipped != nil:
					// Every recipient was refused: that, not the
					// server's answer to DATA (554 "no valid
					// recipients", RFC 2920 §3.1), is the error.
					refused = firstSkipped
				case !accepts(cmd.name, cmd.want, r.code):
					if skipRcpt(cmd, r) {
						break
					}
					refused = refusal(cmd, &Error{Command: cmd.name, Err: r.err()})
				case cmd.name == "RCPT":
					accepted++
				}
				if cmd.name == "DATA" && r.code == 354 && refused != nil {
					// A refused recipient, yet the server waits for
					// content: none is sent, and a transaction whose
					// content never ended is discarded (RFC 5321 §3.8).
					return c.lost("DATA", refused)
				}
			}
		}
		if refused != nil {
			return c.afterRefusal(refused)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The content and the final reply (RFC 5321 §4.1.1.4), which may take
	// the server a while: DataTimeout.
	err = c.guard(ctx, c.cfg.DataTimeout, func() error {
		rc, err := content.Open()
		if err != nil {
			return c.lost("message", &ContentError{Err: err})
		}
		defer rc.Close()
		dw := newDotWriter(c.w)
		// A read error comes back as a *ContentError, a write error as
		// it is; either way the dotWriter is not closed, so no final "."
		// leaves.
		buf := copyBuffers.Get().(*[]byte)
		defer copyBuffers.Put(buf)
		if _, err := io.CopyBuffer(dw, &countingReader{r: rc, want: content.Size}, *buf); err != nil {
			return c.lost("message", err)
		}
		if err := dw.Close(); err != nil { // ".\r\n" and a flush
			return c.lost("message", err)
		}
		if _, err := c.expect("message", 250); err != nil {
			return err
		}
		c.dirty = false
		return nil
	})
	if err != nil {
		return nil, err
	}
	return skipped, nil
}

// copyBuffers hold the buffers content is copied through. io.Copy would
// make a 32 KiB one for every message (neither the content's reader nor
// the dotWriter offers a shortcut), and with many mailboxes that garbage
// kept the collector busy (BENCHMARKS.md, "Many mailboxes"); a buffer per
// session instead would hold 32 KiB for every idle pooled session.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// maxGroup is the most commands written before their replies are read.
const maxGroup = 100

// afterRefusal: a refused RSET leaves the session in an unknown state, so
// the connection is closed; any other refusal concerns this message only.
func (c *Client) afterRefusal(err error) error {
	var e *Error
	if errors.As(err, &e) && e.Command == "RSET" && e.Reply() != nil {
		return c.lost("RSET", err)
	}
	return err
}

type command struct {
	name string
	line string
	want int
	arg  string // RCPT: the recipient
}

// transaction builds the commands of one transaction, refusing locally
// what the server could never take.
func (c *Client) transaction(from string, rcpts []string, content Content) ([]command, error) {
	if len(rcpts) == 0 {
		return nil, &Error{Command: "RCPT", Err: fmt.Errorf("%w: no recipient", ErrNotSendable)}
	}
	utf8 := !isASCII(from)
	for _, a := range append([]string{from}, rcpts...) {
		if strings.ContainsAny(a, "\r\n<>") {
			return nil, &Error{Command: "MAIL", Err: fmt.Errorf("%w: address %q holds a line break or angle bracket", ErrNotSendable, a)}
		}
		utf8 = utf8 || !isASCII(a)
	}
	var mail strings.Builder
	mail.WriteString("MAIL FROM:<")
	mail.WriteString(from)
	mail.WriteString(">")
	if _, ok := c.ext["SIZE"]; ok {
		mail.WriteString(" SIZE=" + strconv.FormatInt(content.Size, 10)) // RFC 1870 §6
	}
	if content.EightBit {
		if _, ok := c.ext["8BITMIME"]; !ok {
			return nil, &Error{Command: "MAIL", Err: fmt.Errorf("%w: 8-bit content and the server does not offer 8BITMIME", ErrNotSendable)}
		}
		mail.WriteString(" BODY=8BITMIME") // RFC 6152 §3
	}
	if utf8 {
		if _, ok := c.ext["SMTPUTF8"]; !ok {
			return nil, &Error{Command: "MAIL", Err: fmt.Errorf("%w: an address is not ASCII and the server does not offer SMTPUTF8", ErrNotSendable)}
		}
		mail.WriteString(" SMTPUTF8") // RFC 6531 §3.4
	}
	cmds := make([]command, 0, len(rcpts)+3)
	if c.dirty {
		// RFC 2920 §3.1: RSET may open a pipelined group.
		cmds = append(cmds, command{name: "RSET", line: "RSET", want: 250})
	}
	cmds = append(cmds, command{name: "MAIL", line: mail.String(), want: 250})
	for _, r := range rcpts {
		cmds = append(cmds, command{name: "RCPT", line: "RCPT TO:<" + r + ">", want: 250, arg: r})
	}
	return append(cmds, command{name: "DATA", line: "DATA", want: 354}), nil
}

func isASCII[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// Quit sends QUIT and closes the connection (RFC 5321 §4.1.1.10).
func (c *Client) Quit(ctx context.Context) error {
	err := c.guard(ctx, c.cfg.CommandTimeout, func() error { return c.cmd("QUIT", 221, "QUIT") })
	c.Close()
	return err
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// guard runs one exchange under a deadline; a cancelled ctx closes the
// connection and is what the error then says.
func (c *Client) guard(ctx context.Context, timeout time.Duration, f func() error) error {
	if c.broken {
		return &Error{Command: "connection", Err: net.ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return c.lost("connection", err)
	}
	conn := c.conn // the TCP connection, or TLS over it: closing either ends both
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(timeout))
	err := f()
	if !stop() && ctx.Err() != nil {
		c.broken = true
		var e *Error
		if errors.As(err, &e) && e.Reply() == nil {
			e.Err = fmt.Errorf("%w (%v)", ctx.Err(), e.Err)
		}
	}
	return err
}

// hello sends EHLO and records the extensions (RFC 5321 §4.1.1.1). HELO is
// not tried: a server without EHLO has no STARTTLS or AUTH either.
func (c *Client) hello() error {
	c.write("EHLO " + c.cfg.LocalName)
	if err := c.flush("EHLO"); err != nil {
		return err
	}
	r, err := c.expect("EHLO", 250)
	if err != nil {
		return err
	}
	c.ext = ParseEHLO(r.text)
	return nil
}

// cmd sends one command and waits for its reply.
func (c *Client) cmd(name string, want int, line string) error {
	c.write(line)
	if err := c.flush(name); err != nil {
		return err
	}
	_, err := c.expect(name, want)
	return err
}

// write queues a command line; flush sends what is queued.
func (c *Client) write(line string) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
}

func (c *Client) flush(name string) error {
	if err := c.w.Flush(); err != nil {
		return c.lost(name, err)
	}
	return nil
}

// expect reads a reply and refuses every code but want.
func (c *Client) expect(name string, want int) (reply, error) {
	r, err := c.reply(name)
	if err == nil && !accepts(name, want, r.code) {
		err = &Error{Command: name, Err: r.err()}
	}
	return r, err
}

// accepts says whether code answers command name as wanted. A recipient
// is accepted by any positive completion reply (RFC 5321 §4.2.1), not
// only 250: 251 "user not local; will forward" (§4.1.1.3, §3.4) and 252
// (§3.5.3) take the message too. Every other command wants its reply
// exactly.
func accepts(name string, want, code int) bool {
	if name == "RCPT" {
		return code >= 200 && code < 300
	}
	return code == want
}

type reply struct {
	code int
	text string // lines joined by "\n", without the codes
}

func (r reply) err() *smtp.SMTPError { return ParseReply(r.code, r.text) }

// reply reads one (possibly multiline) reply (RFC 5321 §4.2.1). A
// malformed reply or a network error is an *Error without a reply.
func (c *Client) reply(name string) (reply, error) {
	c.lim.n = maxReplyBytes
	code, text, err := c.r.ReadResponse(0) // 0: any code; the caller decides
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		// No reply, or one that cannot be read: from here on replies
		// cannot be matched to commands.
		return reply{}, c.lost(name, err)
	}
	return reply{code: code, text: text}, nil
}

// maxReplyBytes bounds what the connection may bring in while one reply
// is read. A reply line is at most 512 octets (RFC 5321 §4.5.3.1.5) and
// Office 365's longest reply, EHLO's, is a few hundred bytes; net/textproto
// reads a line of any length, so without a bound a server, or someone on
// the path before STARTTLS, could send one line until the command timeout
// and have it all held in memory. Bytes read ahead (pipelined replies
// that follow) count too, which a group of maxGroup short replies is far
// from filling.
const maxReplyBytes = 64 << 10

// errReplyTooLong ends a reply past maxReplyBytes.
var errReplyTooLong = fmt.Errorf("reply longer than %d bytes", maxReplyBytes)

// replyLimit is the connection's reader with a budget that reply renews.
type replyLimit struct {
	r io.Reader
	n int
}

func (l *replyLimit) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errReplyTooLong
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
