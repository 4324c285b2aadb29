package relaycmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/cli"
	"relay365/internal/ingress"
	"relay365/internal/message"
	"relay365/producer"
)

// relay sendmail -bs speaks SMTP on standard input and output, as
// sendmail(8) and Postfix's sendmail(1) do ("-bs: Stand-alone SMTP
// server mode. Read SMTP commands from standard input, and write
// responses to standard output"). PHP's SwiftMailer and Symfony Mailer
// run "/usr/sbin/sendmail -bs" by default, and Laravel "sendmail -bs -i":
// they read the greeting, send EHLO, MAIL, RCPT and DATA, and take the
// reply to DATA as the answer. Each message is queued as one read on
// standard input would be (buildSendmail, queueSendmail): the
// recipients are those of RCPT TO, the MAIL FROM address stands where
// -f does, and the reply says what the exit code would have: 250 queued
// or kept in the spool, 554 never sendable (65; 552 5.3.4 when over the
// account's size limit or, rendered, over 35 MB, as past SIZE, RFC 5321
// §4.5.3.1.10), 550 refused by NATS
// (77), 451 try again later (75, 70). The exit is 0 once the client
// quits or closes its end, whatever became of its messages: they were
// answered one by one.

// runSMTPStdio serves one SMTP session on env.Stdin and env.Stdout.
func runSMTPStdio(ctx context.Context, c sendmailConfig, env Env) error {
	conn := newStdioConn(env.Stdin, env.Stdout)
	domain := c.Domain
	if domain == "" {
		domain = "localhost"
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &stdioSession{ctx: ctx, c: c, stderr: env.Stderr}, nil
	}))
	srv.Domain = domain
	srv.MaxMessageBytes = message.MaxSize
	srv.MaxRecipients = message.MaxRecipients
	// go-smtp's 2000 would end the session at a longer line, where read
	// on stdin the body is sent quoted-printable (encodeLongLines): a
	// line may be as long as a message may be.
	srv.MaxLineLength = message.MaxSize
	srv.ErrorLog = log.New(env.Stderr, "relay sendmail: ", 0)
	l := &oneConnListener{conn: conn, closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case <-conn.closed: // QUIT, or the client closed its end
		// The session is over: wait for its goroutine, so nothing is
		// written after the return.
		srv.Shutdown(context.Background())
	case <-ctx.Done():
		srv.Close() // a Read of stdin may never return
	}
	if err := <-served; err != nil {
		return cli.ExitError{Code: exSoftware, Err: err}
	}
	if ctx.Err() != nil {
		return cli.ExitError{Code: exTempFail, Err: fmt.Errorf("interrupted: %w", ctx.Err())}
	}
	return nil
}

// stdioSession is one SMTP session's envelope.
type stdioSession struct {
	ctx    context.Context
	c      sendmailConfig
	stderr io.Writer
	from   string
	rcpts  []string
}

func (s *stdioSession) Reset() { s.from, s.rcpts = "", nil }

func (s *stdioSession) Logout() error { return nil }

func (s *stdioSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.rcpts = from, nil // "" is the null sender, as -f <>
	return nil
}

func (s *stdioSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if _, err := parseAddresses(to, s.c.Domain); err != nil {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: ingress.ReplyText(err.Error())}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *stdioSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r) // go-smtp has undone the dot-stuffing, and holds it to MaxMessageBytes
	if err != nil {
		return err
	}
	c := s.c
	c.Rcpts, c.Sender, c.FromHeader = s.rcpts, s.from, false
	m, err := buildSendmail(c, data)
	if err != nil {
		err = cli.ExitError{Code: exDataErr, Err: err}
	} else {
		err = queueSendmail(s.ctx, c, m, s.stderr)
	}
	if err == nil {
		return nil
	}
	fmt.Fprintf(s.stderr, "relay sendmail: %v\n", err)
	reply := &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: ingress.ReplyText(err.Error())}
	var tl *producer.TooLarge
	if ee := (cli.ExitError{}); errors.As(err, &ee) {
		switch ee.Code {
		case exDataErr:
			reply.Code, reply.EnhancedCode = 554, smtp.EnhancedCode{5, 6, 0}
			if errors.As(err, &tl) {
				// Over the account's size limit, or over Office 365's
				// 35 MB once rendered (a *message.TooLarge inside the
				// *message.Invalid): RFC 5321 §4.5.3.1.10's 552 and RFC
				// 3463 §3.4's 5.3.4 "message too big for system", as
				// go-smtp answers past SIZE, not 5.6.0 (content the
				// relay cannot read).
				reply.Code, reply.EnhancedCode = 552, smtp.EnhancedCode{5, 3, 4}
			}
		case exNoPerm:
			reply.Code, reply.EnhancedCode = 550, smtp.EnhancedCode{5, 7, 1}
		}
	}
	return reply
}

// stdioConn is standard input and output as the one connection of an
// SMTP server.
type stdioConn struct {
	r      io.Reader
	w      io.Writer
	once   sync.Once
	closed chan struct{}
}

func newStdioConn(r io.Reader, w io.Writer) *stdioConn {
	return &stdioConn{r: r, w: w, closed: make(chan struct{})}
}

func (c *stdioConn) Read(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	return c.r.Read(p)
}

func (c *stdioConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *stdioConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

func (c *stdioConn) LocalAddr() net.Addr              { return stdioAddr{} }
func (c *stdioConn) RemoteAddr() net.Addr             { return stdioAddr{} }
func (c *stdioConn) SetDeadline(time.Time) error      { return nil }
func (c *stdioConn) SetReadDeadline(time.Time) error  { return nil }
func (c *stdioConn) SetWriteDeadline(time.Time) error { return nil }

// oneConnListener hands out its connection once, then waits to be
// closed.
type oneConnListener struct {
	mu     sync.Mutex
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return stdioAddr{} }
