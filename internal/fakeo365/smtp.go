package fakeo365

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the fake accepted.
type Message struct {
	Mailbox    string    // authenticated user= mailbox
	From       string    // MAIL FROM
	To         []string  // RCPT TO
	Data       []byte    // raw message bytes as received
	Subject    string    // Subject header, RFC 2047 decoded
	HeaderFrom string    // address of the (first) From header
	Time       time.Time // Config.Now at acceptance
	Conn       uint64    // the SMTP connection it came on, numbered from 1 in order of connection
}

func (m Message) clone() Message {
	m.To = slices.Clone(m.To)
	m.Data = slices.Clone(m.Data)
	return m
}

// Exchange Online replies (docs/office365.md §1 and §4).
var (
	replyAuthDisabled     = smtpError(535, 5, 7, 139, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.")
	replyBasicDisabled    = smtpError(535, 5, 7, 139, "Authentication unsuccessful, basic authentication is disabled.")
	replyBadXOAUTH2       = smtpError(501, 5, 5, 124, "Invalid XOAUTH2 client response.")
	replyNotAuthenticated = smtpError(530, 5, 7, 57, "Client not authenticated to send mail.")
	replyTooManyRcpts     = smtpError(452, 4, 5, 3, "Too many recipients")
	replyTempError        = smtpError(451, 4, 7, 0, "Temporary server error. Please try again later. PRX4")
	replyStoreFailed      = smtpError(451, 4, 3, 0, "Temporary server error. Please try again later. Could not store the message.")
	replyThreadLimit      = smtpError(432, 4, 3, 2, "STOREDRV.ClientSubmit; sender thread limit exceeded")
	replyQuota            = smtpError(554, 5, 2, 0, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Message submission rate for this client has exceeded the configured limit.[EndDiagnosticData]")
	replySendAs           = smtpError(550, 5, 7, 60, "SMTP; Client does not have permissions to send as this sender")
)

// errDropped ends a DATA whose connection DropNextData cut; no reply is sent.
var errDropped = errors.New("fakeo365: connection dropped by DropNextData")

// dropAfterBytes is how much of the message DropNextData reads before it
// cuts the connection.
const dropAfterBytes = 16

func smtpError(code, class, subject, detail int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: msg}
}

func (s *Server) replyAuthFailed() *smtp.SMTPError {
	return smtpError(535, 5, 7, 3, "Authentication unsuccessful ["+s.cfg.Hostname+"]")
}

// replyKey renders the code and enhanced code of a reply, like "535 5.7.3".
func replyKey(e *smtp.SMTPError) string {
	ec := e.EnhancedCode
	if ec == smtp.NoEnhancedCode || ec == smtp.EnhancedCodeNotSet {
		return fmt.Sprint(e.Code)
	}
	return fmt.Sprintf("%d %d.%d.%d", e.Code, ec[0], ec[1], ec[2])
}

// submission is one accepted message in a mailbox's sending history.
type submission struct {
	at    time.Time
	rcpts int
}

// mailState is the SMTP half of the Server state, guarded by Server.mu.
type mailState struct {
	sendAs          map[string]map[string]bool // mailbox → addresses it may send as
	authDisabled    map[string]bool            // tenant → SMTP AUTH off
	quotaExceeded   map[string]bool            // mailbox → quota switch on
	refuseRcpt      map[string]*smtp.SMTPError // recipient → the reply to its RCPT (RefuseRecipient)
	failData        int
	dropData        int
	loseReply       int                 // LoseNextReply
	nextReply       map[stage]*injected // stage → reply for the next n commands of that stage
	authChallenge   int                 // the next n XOAUTH2 exchanges get the JSON error challenge
	challengeStatus string              // its "status"
	delayData       int                 // the next n ends of DATA wait delayFor
	delayFor        time.Duration
	random          *rand.Rand // SetRandomFaults; nil when off
	randomFail      float64
	randomDrop      float64
	sessions        map[string]int          // mailbox → authenticated connections
	authed          map[*session]struct{}   // the authenticated sessions themselves
	history         map[string][]submission // mailbox → accepted in the last 24h
	messages        []Message
	accepted        int           // messages accepted, kept or not (Config.CountOnly)
	msgSignal       chan struct{} // closed and replaced whenever a message is captured
	replies         map[string]int
}

func newMailState() mailState {
	return mailState{
		sendAs:        make(map[string]map[string]bool),
		authDisabled:  make(map[string]bool),
		quotaExceeded: make(map[string]bool),
		refuseRcpt:    make(map[string]*smtp.SMTPError),
		sessions:      make(map[string]int),
		authed:        make(map[*session]struct{}),
		history:       make(map[string][]submission),
		msgSignal:     make(chan struct{}),
		replies:       make(map[string]int),
		nextReply:     make(map[stage]*injected),
	}
}

// stage is where an injected reply replaces the fake's own answer.
type stage int

const (
	stageAuth stage = iota // AUTH XOAUTH2, before the token is checked
	stageMail              // MAIL FROM
	stageData              // end of DATA, after the message was read
)

// injected is a reply to give n more times.
type injected struct {
	n     int
	reply *smtp.SMTPError
}

// takeInjectedLocked returns the reply injected for st, if one is due.
func (s *Server) takeInjectedLocked(st stage) *smtp.SMTPError {
	in := s.nextReply[st]
	if in == nil || !takeOne(&in.n) {
		return nil
	}
	return in.reply
}

func (s *Server) takeInjected(st stage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.takeInjectedLocked(st); r != nil {
		return s.rejectLocked(r)
	}
	return nil
}

func (s *Server) newSMTPServer(creds *tlsCredentials) *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{srv: s, conn: c, id: s.connSeq.Add(1)}, nil
	}))
	srv.Domain = s.cfg.Hostname
	srv.TLSConfig = creds.serverConfig()
	srv.AllowInsecureAuth = false // AUTH is advertised and allowed only after STARTTLS
	srv.MaxMessageBytes = maxMessageBytes
	// Office 365 takes an XOAUTH2 response of 2-3 KB on the AUTH line;
	// go-smtp's default would refuse lines over 2,000. (Config.Strict
	// keeps the limits by itself.)
	srv.MaxLineLength = 16 << 10
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableBINARYMIME = true
	srv.ReadTimeout = s.cfg.IdleTimeout // go-smtp answers a silent client "421 4.4.2" and closes
	srv.WriteTimeout = smtpIOTimeout
	srv.ErrorLog = logWriter{s.log}
	return srv
}

// reject counts a non-2xx reply and returns it for go-smtp to send.
func (s *Server) reject(e *smtp.SMTPError) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejectLocked(e)
}

func (s *Server) rejectLocked(e *smtp.SMTPError) error {
	s.replies[replyKey(e)]++
	s.log.Debug().Int("code", e.Code).Str("reply", e.Message).Msg("SMTP reject")
	return e
}

// ---- session ----------------------------------------------------------------

// session is one SMTP session. go-smtp creates one per EHLO before and after
// STARTTLS; AUTH is only possible on the second, so a session holds at most
// one slot of the per-mailbox connection limit.
type session struct {
	srv  *Server
	conn *smtp.Conn
	id   uint64 // Message.Conn

	user      string // authenticated user=, "" before AUTH
	holdsSlot bool   // counted in srv.sessions; guarded by srv.mu because go-smtp may call Logout from Server.Close

	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string { return []string{sasl.Login, "XOAUTH2"} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case "XOAUTH2":
		return &xoauth2Server{sess: ss}, nil
	case sasl.Login:
		return &loginServer{srv: ss.srv}, nil
	}
	return nil, ss.srv.reject(smtp.ErrAuthUnknownMechanism)
}

// authenticate checks an XOAUTH2 bearer token for user and takes a slot of
// the mailbox's connection limit.
func (ss *session) authenticate(user, token string) error {
	s := ss.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.takeInjectedLocked(stageAuth); r != nil {
		return s.rejectLocked(r)
	}
	at := s.access[token]
	if at != nil && s.authDisabled[key(at.tenant)] {
		return s.rejectLocked(replyAuthDisabled)
	}
	if !s.tokenAuthorizesLocked(at, user) {
		return s.rejectLocked(s.replyAuthFailed())
	}
	ss.user, ss.holdsSlot = user, true
	s.sessions[key(user)]++
	s.authed[ss] = struct{}{}
	s.log.Info().Str("user", user).Str("tenant", at.tenant).Bool("app", at.mailbox == "").Msg("SMTP AUTH XOAUTH2 ok")
	return nil
}

// tokenAuthorizesLocked: the token is live, meant for Exchange Online, and
// either app-only (any user=) or delegated by user.
func (s *Server) tokenAuthorizesLocked(at *accessToken, user string) bool {
	switch {
	case at == nil, s.now().After(at.expires), !at.outlook:
		return false
	case at.mailbox == "":
		return true
	default:
		return strings.EqualFold(at.mailbox, user)
	}
}

func (ss *session) Logout() error {
	s := ss.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss.holdsSlot {
		s.sessions[key(ss.user)]--
		ss.holdsSlot = false
	}
	delete(s.authed, ss)
	return nil
}

func (ss *session) Reset() {
	ss.from, ss.to = "", nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.user == "" {
		return ss.srv.reject(replyNotAuthenticated)
	}
	if err := ss.srv.takeInjected(stageMail); err != nil {
		return err
	}
	ss.from, ss.to = from, nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.user == "" {
		return ss.srv.reject(replyNotAuthenticated)
	}
	if limit := ss.srv.cfg.MaxRecipients; limit > 0 && len(ss.to) >= limit {
		return ss.srv.reject(replyTooManyRcpts)
	}
	ss.srv.mu.Lock()
	refused := ss.srv.refuseRcpt[key(to)]
	ss.srv.mu.Unlock()
	if refused != nil {
		return ss.srv.reject(refused)
	}
	ss.to = append(ss.to, to)
	return nil
}

// countOnlyHead is what a CountOnly sink keeps of a message.
const countOnlyHead = 64 << 10

// Data reads the whole message and only then decides, as Exchange Online
// rejects for policy at the end of DATA.
func (ss *session) Data(r io.Reader) error {
	s := ss.srv
	if s.takeDrop() {
		io.CopyN(io.Discard, r, dropAfterBytes)
		ss.conn.Conn().Close()
		s.log.Info().Str("user", ss.user).Msg("SMTP DATA: connection dropped (fault injected)")
		return errDropped
	}
	var data []byte
	var err error
	if s.cfg.CountOnly {
		// A sink keeps nothing: the head for the subject, the rest
		// counted and dropped, so a bench of 30 MB messages measures the
		// relay's memory, not the sink's.
		data, err = io.ReadAll(io.LimitReader(r, countOnlyHead))
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
	} else {
		data, err = io.ReadAll(r)
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) { // message too large
			return s.reject(se)
		}
		return err
	}
	if s.cfg.Strict {
		if why := badText(data); why != "" {
			return s.reject(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message refused: " + why})
		}
	}
	if d := s.takeDelay(); d > 0 {
		s.dataHeld.Add(1)
		select {
		case <-time.After(d):
		case <-s.done:
			s.dataHeld.Add(-1)
			return errDropped
		}
		s.dataHeld.Add(-1)
	}
	if err := s.submit(Message{Mailbox: ss.user, From: ss.from, To: slices.Clone(ss.to), Data: data, Conn: ss.id}); err != nil {
		return err
	}
	if s.takeLoseReply() {
		// Accepted, and the connection ends before the 250 leaves:
		// the client cannot know the message went.
		ss.conn.Conn().Close()
		s.log.Info().Str("user", ss.user).Msg("SMTP DATA: accepted, reply lost (fault injected)")
		return errDropped
	}
	return nil
}

func (s *Server) takeLoseReply() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return takeOne(&s.loseReply)
}

func (s *Server) takeDrop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return takeOne(&s.dropData) || s.rollLocked(s.randomDrop)
}

func (s *Server) takeDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if takeOne(&s.delayData) {
		return s.delayFor
	}
	return 0
}

// rollLocked draws from the seeded random faults: true with probability p.
func (s *Server) rollLocked(p float64) bool {
	return s.random != nil && p > 0 && s.random.Float64() < p
}

// submit applies the end-of-DATA policy and captures msg if it passes.
func (s *Server) submit(msg Message) error {
	hdr := parseHeader(msg.Data)
	msg.Subject = hdr.subject
	if len(hdr.from) > 0 {
		msg.HeaderFrom = hdr.from[0]
	}
	now := s.now()
	msg.Time = now
	mailbox := key(msg.Mailbox)

	if err := s.captureAccepted(mailbox, now, hdr.from, msg); err != nil {
		return err
	}
	if s.cfg.OnAccept != nil {
		s.cfg.OnAccept(msg)
	}
	return nil
}

// captureAccepted applies the policy and, if msg passes, records it.
func (s *Server) captureAccepted(mailbox string, now time.Time, headerFrom []string, msg Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply := s.policyLocked(mailbox, now, len(msg.To), headerFrom); reply != nil {
		return s.rejectLocked(reply)
	}
	if err := s.writeEMLLocked(now, msg.Data); err != nil {
		s.log.Error().Err(err).Msg("MailDir write failed")
		return s.rejectLocked(replyStoreFailed)
	}
	if s.cfg.PerMinute > 0 || s.cfg.PerDay > 0 {
		// Only the rate limits read the history; with both off it would
		// only grow (and be scanned on every message).
		s.history[mailbox] = append(s.history[mailbox], submission{at: now, rcpts: len(msg.To)})
	}
	s.accepted++
	if !s.cfg.CountOnly {
		s.messages = append(s.messages, msg)
	}
	close(s.msgSignal)
	s.msgSignal = make(chan struct{})
	s.log.Info().Str("mailbox", msg.Mailbox).Str("from", msg.HeaderFrom).Strs("to", msg.To).
		Str("subject", msg.Subject).Int("bytes", len(msg.Data)).Msg("message accepted")
	return nil
}

// policyLocked returns the end-of-DATA rejection for a message, or nil.
func (s *Server) policyLocked(mailbox string, now time.Time, rcpts int, headerFrom []string) *smtp.SMTPError {
	if r := s.takeInjectedLocked(stageData); r != nil {
		return r
	}
	switch {
	case takeOne(&s.failData), s.rollLocked(s.randomFail):
		return replyTempError
	case s.cfg.MaxConns > 0 && s.sessions[mailbox] > s.cfg.MaxConns:
		return replyThreadLimit
	case s.quotaExceeded[mailbox], s.overRateLocked(mailbox, now, rcpts):
		return replyQuota
	case !s.maySendAsLocked(mailbox, headerFrom):
		return replySendAs
	}
	return nil
}

// overRateLocked checks the rolling per-minute message and per-day
// recipient limits, forgetting history older than a day.
func (s *Server) overRateLocked(mailbox string, now time.Time, rcpts int) bool {
	hist := slices.DeleteFunc(s.history[mailbox], func(h submission) bool {
		return !h.at.After(now.Add(-24 * time.Hour))
	})
	s.history[mailbox] = hist
	lastMinute, lastDayRcpts := 0, 0
	for _, h := range hist {
		if h.at.After(now.Add(-time.Minute)) {
			lastMinute++
		}
		lastDayRcpts += h.rcpts
	}
	return (s.cfg.PerMinute > 0 && lastMinute >= s.cfg.PerMinute) ||
		(s.cfg.PerDay > 0 && lastDayRcpts+rcpts > s.cfg.PerDay)
}

// maySendAsLocked: every From address is the mailbox itself or one it holds
// SendAs on. A message without a parsable From is refused too.
func (s *Server) maySendAsLocked(mailbox string, headerFrom []string) bool {
	if len(headerFrom) == 0 {
		return false
	}
	for _, addr := range headerFrom {
		if a := key(addr); a != mailbox && !s.sendAs[mailbox][a] {
			return false
		}
	}
	return true
}

func (s *Server) writeEMLLocked(now time.Time, data []byte) error {
	if s.cfg.MailDir == "" {
		return nil
	}
	name := fmt.Sprintf("%d-%d.eml", now.UnixNano(), s.accepted+1)
	// Captured mail is mail: readable by the sandbox's user only.
	return os.WriteFile(filepath.Join(s.cfg.MailDir, name), data, 0o600)
}

type headerInfo struct {
	subject string
	from    []string
}

// parseHeader extracts the decoded Subject and the From addresses; a
// message whose header does not parse yields zero values.
func parseHeader(data []byte) headerInfo {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return headerInfo{}
	}
	dec := new(mime.WordDecoder)
	var info headerInfo
	raw := m.Header.Get("Subject")
	if info.subject, err = dec.DecodeHeader(raw); err != nil {
		info.subject = raw
	}
	parser := mail.AddressParser{WordDecoder: dec}
	if list, err := parser.ParseList(m.Header.Get("From")); err == nil {
		for _, a := range list {
			info.from = append(info.from, a.Address)
		}
	}
	return info
}

// ---- SASL servers -------------------------------------------------------------

// SMTP's line limits (RFC 5321 §4.5.3.1.4, §4.5.3.1.6), for Config.Strict.
const (
	maxCommandLine = 512  // octets, CRLF included
	maxTextLine    = 1000 // octets, CRLF included: 998 of text
)

var replyLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}

// badText says what breaks RFC 5322's line rules in a message (as the
// client sent it, dot-stuffing removed), "" when nothing does.
func badText(data []byte) string {
	start := 0
	for i, c := range data {
		switch {
		case c == '\n' && (i == 0 || data[i-1] != '\r'):
			return fmt.Sprintf("bare LF at octet %d", i)
		case c == '\r' && (i+1 == len(data) || data[i+1] != '\n'):
			return fmt.Sprintf("bare CR at octet %d", i)
		case c == '\n':
			if i+1-start > maxTextLine {
				return fmt.Sprintf("a line of %d octets (at most 998 and CRLF)", i+1-start-2)
			}
			start = i + 1
		}
	}
	if len(data)-start > maxTextLine-2 {
		return fmt.Sprintf("a line of %d octets (at most 998 and CRLF)", len(data)-start)
	}
	return ""
}

// xoauth2Server accepts both forms: the response on the AUTH line, or an
// empty "334 " challenge followed by the response.
type xoauth2Server struct {
	sess       *session
	prompted   bool
	challenged bool // sent the JSON error challenge (SetNextAuthChallenge)
}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if x.challenged {
		// The client's answer to the error challenge (RFC 7628
		// §3.2.3: a dummy response; Google's XOAUTH2: empty), which
		// the server does not read: the final reply is the failure.
		return nil, false, x.sess.srv.reject(x.sess.srv.replyAuthFailed())
	}
	if response == nil && !x.prompted {
		x.prompted = true
		return []byte{}, false, nil
	}
	if !x.prompted && x.sess.srv.cfg.Strict && len("AUTH XOAUTH2 ")+base64.StdEncoding.EncodedLen(len(response))+2 > maxCommandLine {
		// The response came on the AUTH line, and that line was too long.
		return nil, false, x.sess.srv.reject(replyLineTooLong)
	}
	user, token, err := ParseXOAUTH2(response)
	if err != nil {
		return nil, false, x.sess.srv.reject(replyBadXOAUTH2)
	}
	if status := x.sess.srv.takeAuthChallenge(); status != "" {
		x.challenged = true
		return authChallenge(status), false, nil
	}
	if err := x.sess.authenticate(user, token); err != nil {
		return nil, false, err
	}
	return nil, true, nil
}

// loginServer plays the AUTH LOGIN dialogue and then refuses: Basic
// authentication is retired.
type loginServer struct {
	srv  *Server
	step int // 0 start, 1 asked for the user name, 2 asked for the password
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch {
	case l.step == 0 && response == nil:
		l.step = 1
		return []byte("Username:"), false, nil
	case l.step < 2:
		l.step = 2
		return []byte("Password:"), false, nil
	}
	return nil, false, l.srv.reject(replyBasicDisabled)
}

// ---- fault switches and observations ----------------------------------------

// SetSendAs sets the addresses mailbox may use in From besides itself.
func (s *Server) SetSendAs(mailbox string, addrs ...string) {
	set := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		set[key(a)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendAs[key(mailbox)] = set
}

// RefuseRecipient makes every RCPT TO of addr answer reply (nil: accept
// it again), as Exchange answers a recipient it refuses outright.
func (s *Server) RefuseRecipient(addr string, reply *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply == nil {
		delete(s.refuseRcpt, key(addr))
		return
	}
	s.refuseRcpt[key(addr)] = reply
}

// DisableSMTPAuth switches SMTP AUTH off (535 5.7.139) for tokens of tenant.
func (s *Server) DisableSMTPAuth(tenant string, disabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authDisabled[key(tenant)] = disabled
}

// SetQuotaExceeded makes every end of DATA for mailbox answer 554 5.2.0
// SubmissionQuotaExceededException.
func (s *Server) SetQuotaExceeded(mailbox string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quotaExceeded[key(mailbox)] = on
}

// FailNextData makes the next n ends of DATA answer 451 4.7.0.
func (s *Server) FailNextData(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failData = n
}

// DropNextData makes the next n DATA commands read part of the message and
// then close the connection without a reply.
func (s *Server) DropNextData(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropData = n
}

// LoseNextReply makes the next n ends of DATA accept the message (it is
// captured and counted) and then close the connection before the 250 is
// sent: the one case where a client cannot tell whether its message went.
func (s *Server) LoseNextReply(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loseReply = n
}

// SetNextAuthReply makes the next n AUTH XOAUTH2 exchanges answer reply
// instead of checking the token: for the replies a correct client never
// provokes (504 5.7.4, 501 5.5.124, 421 4.7.66, ...). n = 0 clears it.
func (s *Server) SetNextAuthReply(n int, reply *smtp.SMTPError) { s.inject(stageAuth, n, reply) }

// SetNextMailReply makes the next n MAIL FROM commands of authenticated
// sessions answer reply (530 5.7.57 when Exchange lost the session, ...).
func (s *Server) SetNextMailReply(n int, reply *smtp.SMTPError) { s.inject(stageMail, n, reply) }

// SetNextDataReply makes the next n ends of DATA answer reply after the
// message was read, before any other policy: for every end-of-DATA reply of
// docs/office365.md §4 the fake has no switch of its own for.
func (s *Server) SetNextDataReply(n int, reply *smtp.SMTPError) { s.inject(stageData, n, reply) }

// SetNextAuthChallenge makes the next n AUTH XOAUTH2 exchanges refuse the
// token the way Gmail and Dovecot do, not Office 365 (docs/office365.md
// §1.3): a 334 whose text is base64 JSON {"status":status,"schemes":
// "bearer","scope":...} (RFC 7628 §3.2.2), then, after the client's
// answer, 535 5.7.3. status is "401" (the token is not valid) or "400"
// (the request was not); n = 0 clears it.
func (s *Server) SetNextAuthChallenge(n int, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authChallenge, s.challengeStatus = n, status
}

func (s *Server) takeAuthChallenge() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !takeOne(&s.authChallenge) {
		return ""
	}
	return s.challengeStatus
}

// authChallenge is the error challenge of RFC 7628 §3.2.2.
func authChallenge(status string) []byte {
	b, _ := json.Marshal(map[string]string{"status": status, "schemes": "bearer", "scope": "https://outlook.office.com/SMTP.Send"})
	return b
}

func (s *Server) inject(st stage, n int, reply *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextReply[st] = &injected{n: n, reply: reply}
}

// DelayNextData makes the next n ends of DATA wait d after reading the
// message and before answering: a slow server, or with a client timeout
// shorter than d, a timeout.
func (s *Server) DelayNextData(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delayData, s.delayFor = n, d
}

// DataInProgress is how many ends of DATA the server holds now, waiting
// out DelayNextData: transactions that are surely under way.
func (s *Server) DataInProgress() int { return int(s.dataHeld.Load()) }

// SetRandomFaults makes every following DATA drop the connection (as
// DropNextData) with probability drop, and every following end of DATA
// answer 451 4.7.0 with probability fail. The draws come from a generator
// seeded with seed, so the sequence of decisions repeats; which message
// meets which decision depends on arrival order. fail = drop = 0 turns it off.
func (s *Server) SetRandomFaults(seed uint64, fail, drop float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.random, s.randomFail, s.randomDrop = nil, fail, drop
	if fail > 0 || drop > 0 {
		s.random = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	}
}

// Connections is the number of SMTP connections accepted since Start: a
// client that pools sessions opens few.
func (s *Server) Connections() int { return s.smtpLn.accepted() }

// Messages returns a copy of the accepted messages, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messagesLocked()
}

func (s *Server) messagesLocked() []Message {
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		out[i] = m.clone()
	}
	return out
}

// Accepted is the number of messages accepted since Start, including
// those Config.CountOnly did not keep.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// WaitMessages blocks until at least n messages were accepted and returns
// them all (none under Config.CountOnly). On ctx end or Close it returns
// what has arrived so far with the error.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	for {
		s.mu.Lock()
		if s.accepted >= n {
			msgs := s.messagesLocked()
			s.mu.Unlock()
			return msgs, nil
		}
		signal := s.msgSignal
		s.mu.Unlock()
		select {
		case <-signal:
		case <-ctx.Done():
			return s.Messages(), ctx.Err()
		case <-s.done:
			return s.Messages(), ErrClosed
		}
	}
}

// OpenConns is the number of open SMTP connections.
func (s *Server) OpenConns() int { return s.smtpLn.open() }

// Replies counts the non-2xx replies the fake decided, keyed like "535 5.7.3".
func (s *Server) Replies() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.replies)
}
