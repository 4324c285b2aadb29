// Package producer lets other Go services hand notification mail to
// Relay365: build a Message, Publish it, and JetStream holds it until a
// relay worker has delivered it through Office 365 or dead-lettered it.
//
//	seed, _ := nats.NkeyOptionFromSeed("producer.nk") // or your NATS's credentials
//	nc, _ := nats.Connect(os.Getenv("RELAY_NATS_URL"), seed,
//		nats.CustomInboxPrefix(producer.InboxPrefix)) // the producer role's inbox
//	p, _ := producer.New(nc)
//	res, err := p.Publish(ctx, &producer.Message{
//		ID:      "alert-7f3a",           // idempotency key: publish twice, mail once
//		Account: "alerts",
//		To:      []string{"ops@contoso.com"},
//		Subject: "CPU high on web-3",
//		Text:    "load 17.2",
//	})
//
// Publish validates first (Check), so a bad address, a header with a line
// break or a raw message the relay cannot render is an error here rather
// than a dead letter later. PublishBatch takes
// many messages and queues them in atomic batches: on a durable relay,
// one disk sync per batch of up to 100 instead of one per message. The message id becomes
// the Nats-Msg-Id, so a retried publish inside the 24 h dedupe window is
// recognised as a duplicate (Result.Duplicate) and delivered once.
//
// # Errors
//
// Errors wrap their cause; errors.As and errors.Is find it. Not worth
// retrying unchanged: a *Invalid (the message can never be sent as it
// is) and a *TooLarge; nor ErrPermission, the NATS server refusing this
// connection's user the subject or its reply inbox (it also matches
// nats.ErrPermissionViolation, and comes as soon as the server refuses,
// not when ctx ends). Worth retrying later, with the same id:
// ErrQueueFull (MAIL, or the body store, has no room), and context.DeadlineExceeded or
// context.Canceled: ctx ended, or a NATS server that is down did not
// answer within ctx's deadline (without one, JetStream's default
// timeout). A MAIL stream that does not exist (and, for a large message,
// the body bucket) is retried until ctx ends (it is what a cluster
// electing a leader looks like): give ctx a deadline. A closed connection is nats.ErrConnectionClosed.
//
// # Size limits
//
// Each account has a size limit (its max_message_bytes: Office 365's
// 35 MB unless the mailbox's is lower), counted after encoding: the
// message as Publish hands it over, MIME-encoded, base64 attachments and
// all (message.CountedSize, which is what the relay's worker checks
// too). Publish refuses a larger message with a *TooLarge naming its size,
// the limit and the account, before anything is queued or stored.
//
// A producer may not read the account registry; it asks relay serve
// (request relay.v1.limits.<account>, internal/limits) once per account
// and keeps the answer for LimitTTL. When nothing answers (relay serve
// down: the queue is durable, so publishing still works), or the account
// is unknown to the relay, Publish assumes 35 MB, says so in a debug log
// (Log) and asks again after FallbackTTL; the worker still dead-letters a
// message over a lower limit.
//
// The connection is yours, with whatever authentication your NATS wants
// (nats.UserCredentials, nats.UserInfo, nats.RootCAs, nats.ClientCert...).
// A producer needs only permission to publish mail.send.> and
// relay.v1.limits.* (and chunks of large bodies into relay_bodies), and
// to subscribe to its inbox for the JetStream acknowledgement and the
// limits answer. The producer user of deploy/nats/auth.conf, and the
// embedded server's producer.nk, may subscribe only under InboxPrefix:
// connect with nats.CustomInboxPrefix(producer.InboxPrefix). With
// nats.go's default _INBOX a publish under those permissions gets a
// permissions violation for its inbox: an ErrPermission that says so. The
// relay answers limits requests only on a reply subject under _INBOX. or
// _INBOX_producer.; with another inbox prefix, Publish falls back to
// 35 MB as above.
package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/body"
	"relay365/internal/limits"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Message is the JSON document of docs/design.md §3.
type Message = message.Message

// Attachment is one attached file.
type Attachment = message.Attachment

// Result says where the message went.
type Result struct {
	ID  string // the message id (generated when the Message had none)
	Seq uint64 // stream sequence in MAIL
	// Duplicate: the id was already published inside the dedupe window
	// (by an earlier call, or by this one's own earlier attempt whose
	// acknowledgement did not come within AttemptTimeout).
	Duplicate bool
	// UnknownAccount says relay serve answered that it knows no account
	// by that alias: the message is queued, and dead-lettered within
	// seconds unless the account is added (a typo in the alias, most
	// likely). False when relay serve did not answer.
	UnknownAccount bool
}

// InboxPrefix is the inbox prefix the producer role may subscribe under
// (deploy/nats/auth.conf, the embedded server's producer.nk): connect with
// nats.CustomInboxPrefix(InboxPrefix).
const InboxPrefix = "_INBOX_producer"

// Producer publishes messages. It is safe for concurrent use once its
// fields are set.
type Producer struct {
	nc *nats.Conn
	js jetstream.JetStream
	// MaxSize is the largest message, counted after encoding, that
	// Publish takes whatever the account's limit; larger ones are refused
	// with a *TooLarge before anything is queued. Default
	// message.MaxSize, Office 365's 35 MB.
	MaxSize int64
	// Log receives debug notes: a limit assumed because relay serve did
	// not answer. Default: none.
	Log zerolog.Logger

	mu     sync.Mutex
	limits map[string]cachedLimit

	cw *connWatch
}

// watcher is one call waiting on the server, ended (its context cancelled
// with the refusal as cause) by a permissions violation of what it sent.
type watcher struct {
	match  func(subject string) bool // a publish subject it sent on
	cancel context.CancelCauseFunc
}

// How long an account's limit is kept: as relay serve gave it, and as
// assumed when it did not answer.
const (
	LimitTTL    = time.Minute
	FallbackTTL = 10 * time.Second
)

// lookupTimeout bounds the question to relay serve (which answers from
// one registry read).
const lookupTimeout = 2 * time.Second

type cachedLimit struct {
	limit   int64
	until   time.Time
	unknown bool // relay serve said it knows no such account
}

// TooLarge is the error for a message over its account's size limit (or
// Producer.MaxSize): Size and Limit in octets, and the Account. Retrying
// the same message cannot help.
type TooLarge = body.TooLarge

// Invalid is the error for a message that can never be sent as it is (no
// recipients, a malformed address, CR or LF in a header field, a bad
// account alias...): Field names the field and Reason says why. Retrying
// the same message cannot help; errors.As finds it through wrapping.
type Invalid = message.Invalid

// ErrQueueFull is matched (errors.Is) by the error of a publish that the
// MAIL stream refused for want of room: its MaxMsgs or MaxBytes reached,
// or the server's storage; or, for a large message, that the body store
// refused its content so. Nothing was queued; try again later, once the
// relay has delivered some of the backlog.
var ErrQueueFull = errors.New("the relay's MAIL queue is full")

// ErrPermission is matched (errors.Is) by the error of a publish the NATS
// server refused this connection's user: no right to publish on
// mail.send.<account> (or to store a large body in relay_bodies), or to
// subscribe to the connection's reply inbox. The error matches
// nats.ErrPermissionViolation too and names what was refused. Retrying
// cannot help until the user's permissions (or the connection's
// credentials, or its inbox prefix) change.
var ErrPermission = errors.New("NATS refused this connection's user")

// New wraps a NATS connection; it fails only when jetstream.New does. The
// MAIL stream must exist (relay serve creates it); while it does not,
// Publish retries until its context ends, then fails with an error that
// asks whether it was created.
//
// The server tells of a publish or a subscription it refuses only with an
// asynchronous error (a permissions violation): New chains a handler of
// its own before the connection's error handler (nc.ErrorHandler, which
// still gets every error; one for all the Producers on the connection),
// so that a Publish the server refused ends at
// once with ErrPermission instead of waiting out its context. A handler
// set later with nc.SetErrorHandler replaces it: Publish then waits out
// its context as it would for a relay that does not answer.
func New(nc *nats.Conn) (*Producer, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Producer{nc: nc, js: js, cw: watchConn(nc)}, nil
}

// connWatch holds the calls of every Producer on one connection that wait
// on the server: New installs one error handler per connection (conns),
// not one per Producer, which would keep every Producer ever made on it
// reachable.
type connWatch struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
}

// conns maps a connection (weakly: it is not kept open or alive by this)
// to its connWatch; the entry goes when the connection is collected.
var conns sync.Map // weak.Pointer[nats.Conn] -> *connWatch

func watchConn(nc *nats.Conn) *connWatch {
	key := weak.Make(nc)
	if cw, ok := conns.Load(key); ok {
		return cw.(*connWatch)
	}
	cw := &connWatch{watchers: map[*watcher]struct{}{}}
	if have, loaded := conns.LoadOrStore(key, cw); loaded {
		return have.(*connWatch)
	}
	prev := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, s *nats.Subscription, err error) {
		cw.refused(c, err)
		if prev != nil {
			prev(c, s, err)
		}
	})
	runtime.AddCleanup(nc, func(k weak.Pointer[nats.Conn]) { conns.Delete(k) }, key)
	return cw
}

var (
	publishViolation   = regexp.MustCompile(`Publish to "(\S+)"`)
	subscribeViolation = regexp.MustCompile(`Subscription to "(\S+)"`)
)

// refused ends the calls waiting on what a permissions violation refused:
// those that published on its subject, or, when it is the connection's
// reply inbox, every call (no acknowledgement can arrive).
func (cw *connWatch) refused(nc *nats.Conn, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	var (
		match func(*watcher) bool
		cause error
	)
	inbox := inboxOf(nc)
	if m := publishViolation.FindStringSubmatch(err.Error()); m != nil {
		subject := m[1]
		match = func(w *watcher) bool { return w.match(subject) }
		cause = fmt.Errorf("%w: %w (this user may not publish on %s, so nothing was queued: connect with the producer's credentials, or give this user the producer's rights, deploy/nats/auth.conf)",
			ErrPermission, err, subject)
	} else if m := subscribeViolation.FindStringSubmatch(err.Error()); m != nil && strings.HasPrefix(m[1], inbox+".") {
		match = func(*watcher) bool { return true }
		hint := "connect with nats.CustomInboxPrefix(producer.InboxPrefix), the producer role's"
		if inbox == InboxPrefix {
			hint = "this user is not the producer role, which may subscribe there: connect with the producer's credentials"
		}
		cause = fmt.Errorf("%w: %w (the NATS server refused this connection's reply inbox %s: %s; the message may have been queued, so publish it again with the same id)",
			ErrPermission, err, inbox, hint)
	} else {
		return
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	for w := range cw.watchers {
		if match(w) {
			w.cancel(cause)
		}
	}
}

// watch returns ctx, ended early by a permissions violation of a publish
// on a subject match takes (or of the reply inbox), and what stops the
// watch, which the caller defers.
func (p *Producer) watch(ctx context.Context, match func(subject string) bool) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watcher{match: match, cancel: cancel}
	p.cw.mu.Lock()
	p.cw.watchers[w] = struct{}{}
	p.cw.mu.Unlock()
	return ctx, func() {
		p.cw.mu.Lock()
		delete(p.cw.watchers, w)
		p.cw.mu.Unlock()
		cancel(nil)
	}
}

// refusal is the permissions violation that ended ctx (watch) in place of
// err, or err.
func refusal(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrPermission) {
		return cause
	}
	return err
}

// mailSubjects matches the subjects the messages are queued on.
func mailSubjects(ms ...*Message) func(string) bool {
	return func(subject string) bool {
		for _, m := range ms {
			if subject == queue.Subject(m.Account) {
				return true
			}
		}
		return false
	}
}

// inboxOf is the connection's reply prefix.
func inboxOf(nc *nats.Conn) string {
	if nc.Opts.InboxPrefix == "" {
		return "_INBOX" // nats.go's default
	}
	return nc.Opts.InboxPrefix
}

// Limit is the size limit Publish holds account's messages to: the
// account's own as relay serve tells it (asked at most once per LimitTTL),
// never more than MaxSize; 35 MB when relay serve does not answer or does
// not know the account, or when ctx ends first (that answer is not
// kept). It never fails, and is safe for concurrent use.
func (p *Producer) Limit(ctx context.Context, account string) int64 {
	now := time.Now()
	p.mu.Lock()
	c, ok := p.limits[account]
	p.mu.Unlock()
	if !ok || !now.Before(c.until) {
		c = p.lookup(ctx, account, now)
		if ctx.Err() != nil {
			// The caller's context ended, not relay serve's answer:
			// keep no fallback that would hide the account's limit
			// from the next call.
			return min(c.limit, p.maxSize())
		}
		p.mu.Lock()
		if p.limits == nil {
			p.limits = map[string]cachedLimit{}
		}
		p.limits[account] = c
		p.mu.Unlock()
	}
	return min(c.limit, p.maxSize())
}

// unknown says whether relay serve answered, on the last lookup, that it
// knows no account by that alias.
func (p *Producer) unknown(account string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limits[account].unknown
}

// lookup asks relay serve; any failure is the 35 MB default for a
// shorter while, never an error: the queue is durable, and a worker
// checks the limit again.
func (p *Producer) lookup(ctx context.Context, account string, now time.Time) cachedLimit {
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	// A user without the right to ask (an auth.conf older than the
	// limits service) falls back at once, not after lookupTimeout.
	lctx, stop := p.watch(lctx, func(subject string) bool { return subject == limits.Subject(account) })
	defer stop()
	n, err := limits.Lookup(lctx, p.nc, account)
	if err == nil {
		return cachedLimit{limit: n, until: now.Add(LimitTTL)}
	}
	ev := p.Log.Debug().Err(err).Str("account", account).Int64("limit", limits.Default)
	var unknown *limits.UnknownAccount
	switch {
	case errors.As(err, &unknown):
		ev.Msg("relay serve does not know the account: assuming the 35 MB limit (the worker will dead-letter the message if the account stays unknown)")
		return cachedLimit{limit: limits.Default, until: now.Add(FallbackTTL), unknown: true}
	default:
		ev.Msg("no answer from relay serve about the account's size limit: assuming 35 MB (publishing works without it; the worker checks the limit)")
	}
	return cachedLimit{limit: limits.Default, until: now.Add(FallbackTTL)}
}

// Publish validates m (filling m.ID when empty) and publishes it on
// mail.send.<account>, retrying with the same id while JetStream is
// briefly unavailable or (ctx having a deadline) an acknowledgement does
// not come within AttemptTimeout (a connection lost under the publish),
// until ctx ends.
//
// A message whose JSON is larger than message.InlineMax (256 KiB: large
// attachments, a big raw message) is rendered here and its content stored
// in the relay's body bucket first; the message published names it
// (docs/design.md §3.5).
//
// A message over its account's size limit (Limit) is a *TooLarge, and
// nothing is stored or queued (docs/design.md §3.6).
//
// Errors are as the package documentation's Errors section says: a
// *Invalid or a *TooLarge before anything is stored or queued;
// ErrQueueFull; ErrPermission; the context's error once ctx ends, NATS or MAIL having
// not answered until then. A large message's body is stored before its
// message is queued: when the queueing fails, or is a duplicate, that
// body is named by nothing and stays in the body bucket until relay
// serve's sweeper deletes it, once older than its orphan age (default
// the 24 h dedupe window); retrying with the same id is safe. Publish is
// safe for concurrent use.
func (p *Producer) Publish(ctx context.Context, m *Message) (Result, error) {
	if err := Check(m); err != nil {
		return Result{}, err
	}
	ctx, stop := p.watch(ctx, mailSubjects(m))
	defer stop()
	data, err := p.prepare(ctx, m)
	if err != nil {
		return Result{}, refusal(ctx, err)
	}
	res, err := attempts(ctx, func(ctx context.Context) (queue.PublishResult, error) {
		return queue.Publish(ctx, p.js, m.Account, m.ID, data)
	})
	if err != nil {
		return Result{}, p.notQueued(ctx, err)
	}
	return Result{ID: m.ID, Seq: res.Seq, Duplicate: res.Duplicate, UnknownAccount: p.unknown(m.Account)}, nil
}

// Check is the validation Publish starts with, without publishing: it
// fills m.ID when empty and returns a *Invalid for a message the relay
// could never send whatever the account (no recipients, a malformed
// address, CR or LF in a header field...). A raw message is also
// rendered as the worker will render it, but for the account's From
// policy, which only relay serve knows: a raw message with a line before
// its header section ends that is no header field, two From fields, a
// From that is not one address, or a line longer than SMTP carries is
// refused here, not dead-lettered later. The account's size limit is not
// checked (Publish asks relay serve for it).
func Check(m *Message) error { return message.Check(m) }

// PublishBatch publishes many messages, in order, and returns one Result
// per message. Each is checked and sized as Publish does it (its body
// stored first when large); then they are queued in atomic batches of up
// to 100 (JetStream's atomic batch publish): on a durable relay each
// batch costs MAIL one synced write where Publish costs one a message,
// so a producer with many messages at hand (a report run, a backlog)
// should use it. Fewer than queue.MinBatch (16) are published one at a
// time: the server's staging of a batch costs more than that saves. A batch the server will not take whole — a message id
// already published among them, say — is published one message at a
// time, so Result.Duplicate means what it means for Publish.
//
// Every message is validated before anything is stored or queued: an
// invalid one fails the call, naming its index, and nothing is queued.
// A message over its account's limit fails the call the same way
// (errors.As finds the *TooLarge); bodies already stored for the
// messages before it are left to the relay's sweeper. When queueing
// fails part-way, the Results returned are those of the messages
// queued, a prefix; publishing the rest again (or all of them: ids make
// copies duplicates) is safe. Errors are those of Publish; it is safe
// for concurrent use.
func (p *Producer) PublishBatch(ctx context.Context, ms []*Message) ([]Result, error) {
	for i, m := range ms {
		if err := Check(m); err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
	}
	ctx, stop := p.watch(ctx, mailSubjects(ms...))
	defer stop()
	items := make([]queue.BatchItem, len(ms))
	for i, m := range ms {
		data, err := p.prepare(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("message %d (%s): %w", i, m.ID, refusal(ctx, err))
		}
		items[i] = queue.BatchItem{Account: m.Account, ID: m.ID, Data: data}
	}
	var qr []queue.PublishResult
	_, err := attempts(ctx, func(ctx context.Context) (struct{}, error) {
		r, err := queue.PublishBatch(ctx, p.js, items[len(qr):])
		qr = append(qr, r...)
		return struct{}{}, err
	})
	res := make([]Result, len(qr))
	for i, r := range qr {
		res[i] = Result{ID: ms[i].ID, Seq: r.Seq, Duplicate: r.Duplicate, UnknownAccount: p.unknown(ms[i].Account)}
	}
	if err != nil {
		return res, p.notQueued(ctx, err)
	}
	return res, nil
}

// AttemptTimeout bounds the wait for one publish's acknowledgement (a
// batch's: its commit's) within the caller's context, when that has a
// deadline. A publish whose
// connection died under it, before the server read it, is never answered
// (nats.go sends again only what it buffered while reconnecting), so
// when no acknowledgement came in time it is published again, under the
// same id: MAIL keeps one copy, and that copy's Result says Duplicate.
const AttemptTimeout = 5 * time.Second

// attempts runs publish with a context of at most AttemptTimeout, again
// while one ends without an answer, until ctx ends. A ctx without a
// deadline gets one call, as before: JetStream bounds its wait for an
// acknowledgement by its own default timeout, and the package promises
// that a NATS server that is down is reported then (retrying until a ctx
// that never ends ends would never return).
func attempts[T any](ctx context.Context, publish func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		return publish(ctx)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		r, err := publish(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return r, err
		}
	}
}

// notQueued is the error of a publish into MAIL that failed. A stored
// body nothing names is the sweeper's (a producer may not delete
// bodies).
func (p *Producer) notQueued(ctx context.Context, err error) error {
	if r := refusal(ctx, err); r != err {
		return r
	}
	if queue.IsFull(err) {
		return fmt.Errorf("%w (try again later): %w", ErrQueueFull, err)
	}
	if errors.Is(err, nats.ErrConnectionClosed) {
		// The caller's own doing: relay serve has nothing to do with it.
		return fmt.Errorf("%w (the NATS connection given to producer.New was closed: connect again and make a new Producer)", err)
	}
	// The server refused the connection's reply inbox (and the handler
	// New chained was replaced): no acknowledgement could ever arrive,
	// whatever relay serve does. Said instead of the usual guess, as
	// nats.go reports it only asynchronously.
	inbox := inboxOf(p.nc)
	if le := p.nc.LastError(); errors.Is(le, nats.ErrPermissionViolation) && strings.Contains(le.Error(), "Subscription to \""+inbox+".") {
		return fmt.Errorf("%w (the NATS server refused this connection's reply inbox %s: connect with nats.CustomInboxPrefix(producer.InboxPrefix); the message may have been queued, so publish it again with the same id): %v",
			err, inbox, le)
	}
	return fmt.Errorf("%w (is relay serve running and the MAIL stream created?)", err)
}

// prepare sizes a validated message against its account's limit and
// returns the JSON to queue: the message itself, or, for a large one,
// the envelope naming its body, stored first (docs/design.md §3.5).
func (p *Producer) prepare(ctx context.Context, m *Message) ([]byte, error) {
	limit := p.Limit(ctx, m.Account)
	data, inline, err := message.EncodeInline(m)
	switch {
	case err == nil && !inline:
		data, err = p.store(ctx, m, limit)
		if queue.IsFull(err) {
			// The body store has no room (its limits, or the disk it
			// shares with MAIL): the queue is full for this message.
			err = fmt.Errorf("%w (try again later): %w", ErrQueueFull, err)
		}
	case err == nil && limit < message.MaxSize && m.Body == nil:
		// An inline message (JSON at most 256 KiB) cannot pass 35 MB
		// whatever its encoding: it is rendered to be counted only for
		// an account with a lower limit.
		err = checkSize(m, limit)
	}
	return data, err
}

// PublishRaw publishes a complete RFC 5322 message read from r (the
// content of sendmail's stdin, say) to the given envelope recipients
// through account, its content in the body store when it is large.
// Line endings are made CRLF.
//
// The message is read into memory first (at most MaxSize and one octet):
// it is checked whole before anything is stored, because a producer may
// store bodies but not delete them, and a store that failed half-way
// would leave chunks behind. Its errors are r's, and those of Publish
// (a message over MaxSize is a *TooLarge); it is safe for concurrent
// use.
func (p *Producer) PublishRaw(ctx context.Context, account, id string, rcpts []string, r io.Reader) (Result, error) {
	raw, err := io.ReadAll(io.LimitReader(r, p.maxSize()+1))
	if err != nil {
		return Result{}, err
	}
	return p.Publish(ctx, &Message{ID: id, Account: account, To: rcpts, Raw: raw})
}

func (p *Producer) maxSize() int64 {
	if p.MaxSize > 0 {
		return p.MaxSize
	}
	return message.MaxSize
}

// checkSize counts m as the worker does (message.CountedSize).
func checkSize(m *Message, limit int64) error {
	n, err := message.CountedSize(m)
	if err != nil {
		return err
	}
	if n > limit {
		return &TooLarge{Size: n, Limit: limit, Account: m.Account}
	}
	return nil
}

// store renders m, stores its content and returns the JSON of the message
// that names it.
func (p *Producer) store(ctx context.Context, m *Message, limit int64) ([]byte, error) {
	rcpts, err := m.Recipients()
	if err != nil {
		return nil, err
	}
	raw, err := message.RenderUnsent(m)
	if err != nil {
		return nil, err
	}
	// Checked whole before anything is stored: a producer may store
	// bodies but not delete them, so a Put must not fail on the content.
	// The stored object is these octets: message.CountedSize.
	if int64(len(raw)) > limit {
		return nil, &TooLarge{Size: int64(len(raw)), Limit: limit, Account: m.Account}
	}
	cw := message.NewCRLFWriter(io.Discard)
	if _, err := cw.Write(raw); err != nil {
		return nil, err
	}
	env := &Message{ID: m.ID, Account: m.Account, To: m.To, Cc: m.Cc, Bcc: m.Bcc}
	if len(env.To)+len(env.Cc)+len(env.Bcc) == 0 {
		env.To = rcpts // a raw message's own To, Cc and Bcc fields
	}
	bctx, stop := p.watch(ctx, func(subject string) bool { return strings.HasPrefix(subject, "$O."+body.Bucket+".") })
	defer stop()
	data, err := storeBody(bctx, body.OpenStoreOnly(p.js), env, raw, limit)
	return data, refusal(bctx, err)
}

// storeBody stores raw as env's body, retrying while its bucket is not
// there until ctx ends, on the schedule (queue.AwaitRetry) on which
// queue.Publish retries a MAIL stream that is not there: relay serve (or
// relay setup) makes both, and both missing is what a relay not started
// yet, or a cluster electing a leader, looks like. Failing at once made a
// large message's publish end with a bucket error no caller treats as
// temporary (relay sendmail exited 70, not 75, where a small message
// waited and exited 75), against the package's promise that a missing
// MAIL stream is retried until ctx ends. The producer may not ask for the
// bucket's stream info (body.OpenStoreOnly): a missing bucket is a chunk
// no stream answers. Chunks a failed attempt stored are the sweep's.
func storeBody(ctx context.Context, s *body.Store, env *Message, raw []byte, limit int64) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		data, err := s.StoreMessage(ctx, env, bytes.NewReader(raw), limit)
		if err == nil || !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
			return data, err
		}
		if err := queue.AwaitRetry(ctx, attempt, err); err != nil {
			return nil, err
		}
	}
}
