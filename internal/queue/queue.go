// Package queue owns everything JetStream: the embedded server, the MAIL and
// MAIL_DLQ streams, the per-account durable consumers, publishing with
// dedupe, dead-lettering and the dead-letter tools (list, show, replay,
// purge).
//
// The rules it follows are docs/design.md §7:
//   - MAIL is a WorkQueue stream on file storage; a message leaves it only
//     when a worker acks it after Office 365 answered 250, or after its copy
//     is safely in MAIL_DLQ.
//   - MAIL_DLQ has Limits retention so dead letters can be browsed and
//     replayed. The copy is published first and its PubAck awaited; only then
//     is the original terminated (Term deletes it from a WorkQueue stream), so
//     a crash between the two leaves a duplicate dead letter (deduplicated by
//     Nats-Msg-Id "<id>:dlq"), never a lost one.
//   - Each account has its own durable pull consumer, relay-mail-<alias>,
//     filtered on mail.send.<alias>, so a paused account's messages wait in
//     the stream with their delivery count untouched while other accounts'
//     mail flows. A WorkQueue stream refuses overlapping filters, so the
//     catch-all consumer of earlier versions (relay-workers on mail.send.>)
//     is removed by RemoveLegacyConsumer before the first account binds.
//   - Publishing retries with the same Nats-Msg-Id, inside the dedupe window,
//     so a publish that failed during a leader election is not sent twice.
//   - A message keeps its message id (the idempotency key) across dead
//     letter, replay and requeue in the header Relay-Message-Id, while each
//     new stream copy gets its own Nats-Msg-Id (<id>:replay:<dlq-seq>,
//     <id>:requeue:<seq>) so JetStream's dedupe window does not swallow it.
//   - The embedded server syncs to disk before acknowledging (SyncAlways),
//     because a mail relay promises that accepted mail survives a crash.
package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/termsafe"
)

// Names users and dashboards rely on (docs/design.md §4).
const (
	StreamMail    = "MAIL"
	StreamDLQ     = "MAIL_DLQ"
	SubjectPrefix = "mail.send."
	DLQPrefix     = "mail.dlq."
	// ConsumerPrefix + alias names an account's durable consumer.
	ConsumerPrefix = "relay-mail-"
	// LegacyConsumer is the catch-all consumer of earlier versions.
	LegacyConsumer = "relay-workers"
	// BodyBucket is the Object Store bucket of large messages' bodies
	// (internal/body).
	BodyBucket = "relay_bodies"
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id.
	DedupeWindow = 24 * time.Hour
	// MailMaxConsumers is MAIL's consumer limit: one durable consumer per
	// account plus the sweeper's temporary ones. Set on the stream because
	// nats-server (2.12 and later) otherwise applies its default of 1,000
	// consumers per stream (JetStream's default_max_consumers; -1 on the
	// stream does not lift it), and the 1,001st account would never bind.
	MailMaxConsumers = 100_000
)

// Headers on a dead-lettered copy.
const (
	HdrReason       = "Relay-Reason"
	HdrClass        = "Relay-Class"
	HdrAttempts     = "Relay-Attempts"
	HdrLastReply    = "Relay-Last-Reply"
	HdrOrigSubject  = "Relay-Original-Subject"
	HdrOrigSeq      = "Relay-Original-Seq"
	HdrFirstAttempt = "Relay-First-Attempt"
	HdrLastAttempt  = "Relay-Last-Attempt"
	// HdrQueued is when a requeued message was first queued (RFC 3339):
	// its queue lifetime counts from then, not from the requeue.
	HdrQueued = "Relay-Queued"
	// HdrMessageID carries the message id on copies whose Nats-Msg-Id is
	// not the id itself (dead letters, replays, requeues).
	HdrMessageID = "Relay-Message-Id"
	// HdrRecipients, on the dead letter of the recipients a server
	// refused while it took the others (and on its replay), names those
	// recipients as a JSON array of addresses: a worker sends such a
	// message to them only (docs/design.md §5.3).
	HdrRecipients = "Relay-Recipients"
)

// deadLetterHeaders are the headers MoveToDLQ adds; a replay drops them.
var deadLetterHeaders = []string{HdrReason, HdrClass, HdrAttempts, HdrLastReply, HdrOrigSubject, HdrOrigSeq, HdrFirstAttempt, HdrLastAttempt}

// Subject is the subject messages for account are published on.
func Subject(account string) string { return SubjectPrefix + account }

// The queue lifetime (relay serve --queue-lifetime): how long mail may
// wait undelivered before the relay gives it up to MAIL_DLQ with reason
// "expired" — an account waiting for consent, a server refusing for days
// — as Postfix bounces after maximal_queue_lifetime. JetStream's MaxAge
// on MAIL is set a margin above it (MaxAgeFor), so the relay has moved a
// message long before JetStream would drop it unseen.
const (
	DefaultQueueLifetime = 5 * 24 * time.Hour
	MinQueueLifetime     = 10 * time.Second
)

// MaxAgeFor is MAIL's MaxAge for a queue lifetime: two fifths more, at
// least a minute (5 days: 7).
func MaxAgeFor(lifetime time.Duration) time.Duration {
	return lifetime + max(lifetime*2/5, time.Minute)
}

// DuplicatesFor is MAIL's duplicate window for a queue lifetime: the
// dedupe window, cut to MaxAgeFor(lifetime) (JetStream keeps ids no
// longer than the messages). A producer that retries a publish does so
// inside it; body.OrphanAge may not be shorter.
func DuplicatesFor(lifetime time.Duration) time.Duration {
	return min(DedupeWindow, MaxAgeFor(lifetime))
}

// QueuedAt is when a message was first queued: its Relay-Queued header
// on a copy the relay made (relayCopy: a requeue keeps the time), else
// when the stream stored this copy. The header is the relay's own: on a
// producer's message (any publisher may set any header) it would move
// the message's expiry and its Date, so there it is ignored, as is a
// time after the copy was stored.
func QueuedAt(hdr nats.Header, stored time.Time) time.Time {
	if !relayCopy(hdr) {
		return stored
	}
	if t, err := time.Parse(time.RFC3339Nano, hdr.Get(HdrQueued)); err == nil && t.Before(stored) {
		return t
	}
	return stored
}

// relayCopy reports whether hdr is that of a copy the relay queued with
// Relay-Queued: its Nats-Msg-Id is Requeue's "<id>:requeue:<stream seq>"
// or RequeueRecipients' "<id>:rcpts:<16 hex digits>" (the worker's
// recipientsID), <id> being its Relay-Message-Id. A producer that
// publishes a message with these three headers on purpose can still
// shorten its own message's life; one that copied them from a stored
// message (a dead letter published again by hand) cannot.
//
// Both headers went through setID, which trims white space from the ends
// of each whole value: an id that ends in white space ("id-1 ", which
// message.Validate allows) is "id-1" in Relay-Message-Id but keeps its
// space before ":requeue:" in Nats-Msg-Id, which is skipped here.
func relayCopy(hdr nats.Header) bool {
	id := hdr.Get(HdrMessageID)
	rest, ok := strings.CutPrefix(hdr.Get(jetstream.MsgIDHeader), id)
	if ok {
		rest, ok = strings.CutPrefix(strings.TrimLeftFunc(rest, unicode.IsSpace), ":")
	}
	if id == "" || !ok {
		return false
	}
	if seq, ok := strings.CutPrefix(rest, "requeue:"); ok {
		_, err := strconv.ParseUint(seq, 10, 64)
		return err == nil
	}
	if digest, ok := strings.CutPrefix(rest, "rcpts:"); ok {
		_, err := hex.DecodeString(digest)
		return len(digest) == 16 && err == nil
	}
	return false
}

// StreamConfig sizes the streams. Zero values take the defaults.
type StreamConfig struct {
	Replicas int           // 1 on one machine, 3 in a cluster
	Lifetime time.Duration // the queue lifetime; MAIL's MaxAge is MaxAgeFor it; default DefaultQueueLifetime
	DLQAge   time.Duration // how long dead letters are kept; default 30 days
}

// EnsureStreams opens MAIL, MAIL_DLQ and the body bucket (BodyBucket),
// creating or updating them when they are missing or differ (open.go).
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Lifetime == 0 {
		c.Lifetime = DefaultQueueLifetime
	}
	if c.DLQAge == 0 {
		c.DLQAge = 30 * 24 * time.Hour
	}
	mail := jetstream.StreamConfig{
		Name:         StreamMail,
		Description:  "Relay365 outgoing mail, one subject per account",
		Subjects:     []string{SubjectPrefix + ">"},
		Retention:    jetstream.WorkQueuePolicy,
		Storage:      jetstream.FileStorage,
		Replicas:     c.Replicas,
		MaxAge:       MaxAgeFor(c.Lifetime),
		Duplicates:   DuplicatesFor(c.Lifetime),
		Discard:      jetstream.DiscardNew,
		MaxConsumers: MailMaxConsumers,
		MaxMsgSize:   MailMaxMsgSize(js.Conn().MaxPayload()),
		// Producers may hand over many messages in one atomic batch:
		// one synced write for the batch (batch.go).
		AllowAtomicPublish: true,
	}
	if err := openStream(ctx, js, mail, keepingDiff(mail)); err != nil {
		return err
	}
	bodies := bodyStream(c.Replicas)
	if err := openStream(ctx, js, bodies, bodyDiff(bodies)); err != nil {
		return err
	}
	dlq := jetstream.StreamConfig{
		Name:        StreamDLQ,
		Description: "Relay365 dead letters: mail that cannot be sent, with the reason in headers",
		Subjects:    []string{DLQPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.DLQAge,
		Duplicates:  DedupeWindow,
	}
	return openStream(ctx, js, dlq, keepingDiff(dlq))
}

// ConsumerConfig tunes the per-account durable pull consumers.
type ConsumerConfig struct {
	AckWait       time.Duration // default 60s; workers heartbeat with InProgress at AckWait/3
	MaxDeliver    int           // default 50; the worker dead-letters at the last delivery (the server's consumer has no limit: ServerMaxDeliver)
	MaxAckPending int           // default 1000, per account
}

// Consumer defaults, shared with relay serve's flags.
const (
	DefaultAckWait       = 60 * time.Second
	DefaultMaxDeliver    = 50
	DefaultMaxAckPending = 1000
)

// Defaults fills zero values.
func (c *ConsumerConfig) Defaults() {
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
}

// ServerMaxDeliver is the MaxDeliver of the account consumers on the
// server: none. The worker counts deliveries itself (ConsumerConfig's
// MaxDeliver) and acts at the last one; a server limit would stop
// delivering a message whose last delivery could not end it (the dead
// letter or the requeue refused, the worker gone) and leave it in the
// WorkQueue stream unseen (docs/design.md §7.5).
const ServerMaxDeliver = -1

// AccountConsumer is the durable consumer name of an account.
func AccountConsumer(alias string) string { return ConsumerPrefix + alias }

// EnsureAccountConsumer creates or updates the durable consumer of one
// account, filtered on mail.send.<alias>. Every worker process binds the
// same one, so they share the account's queue.
//
// A consumer that already exists as wanted is bound as it is, by its
// info: nothing is written. nats-server handles every create, even one
// that changes nothing, by checking the filter against each other
// consumer of the WorkQueue stream (partitionUnique) and rewriting the
// consumer's meta file, fsynced under sync always. A relay restarting
// with 2,000 accounts paid that 2,000 times, quadratic in the accounts:
// 12.9 s to bind them all, most of it those creates (BENCHMARKS.md, "Many
// mailboxes"). A consumer missing or configured otherwise (flags changed
// since) is created or updated as before.
func EnsureAccountConsumer(ctx context.Context, js jetstream.JetStream, alias string, c ConsumerConfig) (jetstream.Consumer, error) {
	c.Defaults()
	name := AccountConsumer(alias)
	want := jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "Relay365 delivery for account " + alias,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    ServerMaxDeliver,
		MaxAckPending: c.MaxAckPending,
		FilterSubject: Subject(alias),
	}
	cons, err := js.Consumer(ctx, StreamMail, name)
	switch {
	case err == nil && consumerAsWanted(cons.CachedInfo().Config, want):
		return cons, nil
	case err == nil && cons.CachedInfo().Config.MaxDeliver > 0:
		// An earlier version's consumer, with the delivery limit on the
		// server: the messages it stopped delivering stay undelivered
		// after an update lifts the limit. Made anew, the consumer
		// starts at the stream's first message and delivers them; what
		// it had delivered and not acked goes out again, and the
		// idempotency markers recognise any of it that was sent.
		if err := js.DeleteConsumer(ctx, StreamMail, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("replace consumer %s of an earlier version on %s: %w", name, StreamMail, err)
		}
	case err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, fmt.Errorf("look up consumer %s on %s: %w", name, StreamMail, err)
	}
	cons, err = js.CreateOrUpdateConsumer(ctx, StreamMail, want)
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", name, StreamMail, err)
	}
	return cons, nil
}

// consumerAsWanted reports whether an existing consumer's configuration
// (as the server reports it, its defaults filled in) has every field
// EnsureAccountConsumer sets as want has it.
func consumerAsWanted(have, want jetstream.ConsumerConfig) bool {
	return have.Durable == want.Durable &&
		have.Description == want.Description &&
		have.AckPolicy == want.AckPolicy &&
		have.AckWait == want.AckWait &&
		have.MaxDeliver == want.MaxDeliver &&
		have.MaxAckPending == want.MaxAckPending &&
		have.FilterSubject == want.FilterSubject &&
		len(have.FilterSubjects) == 0
}

// DeleteAccountConsumer removes an account's consumer; its messages stay
// in the stream. A missing consumer is not an error.
func DeleteAccountConsumer(ctx context.Context, js jetstream.JetStream, alias string) error {
	err := js.DeleteConsumer(ctx, StreamMail, AccountConsumer(alias))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", AccountConsumer(alias), err)
	}
	return nil
}

// RemoveLegacyConsumer deletes the catch-all consumer relay-workers
// (filter mail.send.>) of earlier versions, whose filter overlaps every
// per-account consumer. Messages it held unacknowledged return to the
// stream. It reports whether there was one to remove.
func RemoveLegacyConsumer(ctx context.Context, js jetstream.JetStream) (bool, error) {
	err := js.DeleteConsumer(ctx, StreamMail, LegacyConsumer)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("remove the shared consumer %s of an earlier version: %w", LegacyConsumer, err)
	}
}

// PublishResult says where a message went.
type PublishResult struct {
	Seq       uint64
	Duplicate bool
}

// Publish puts one message on mail.send.<account> with id as Nats-Msg-Id,
// retrying with the same id while the stream has no leader or the server is
// briefly unreachable (docs/design.md §7), until ctx ends.
func Publish(ctx context.Context, js jetstream.JetStream, account, id string, data []byte) (PublishResult, error) {
	return publishMsg(ctx, js, mailMsg(account, id, data))
}

// mailMsg is the NATS message for one mail: on mail.send.<account>, with
// id as Nats-Msg-Id, so a publish retried, alone or in a batch, is
// recognised.
func mailMsg(account, id string, data []byte) *nats.Msg {
	msg := &nats.Msg{Subject: Subject(account), Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	return msg
}

// retrySchedule is the wait between publish attempts: short first, capped,
// because a leader election takes seconds, not minutes.
var retrySchedule = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second}

// AwaitRetry waits out the pause after failed attempt (0 the first) to
// reach a stream that is not there or not answering yet, on the publish
// retry schedule (docs/design.md §7.8), for whatever else waits out the
// same leader election or relay not started yet. It returns nil once the
// pause is over, or ctx's error, with last (the attempt's error) named,
// if ctx ends first.
func AwaitRetry(ctx context.Context, attempt int, last error) error {
	t := time.NewTimer(retrySchedule[min(attempt, len(retrySchedule)-1)])
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
	case <-t.C:
		return nil
	}
}

func publishMsg(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) (PublishResult, error) {
	for attempt := 0; ; attempt++ {
		ack, err := js.PublishMsg(ctx, msg)
		if err == nil {
			return PublishResult{Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			err = fmt.Errorf("publish to %s: %w", msg.Subject, err)
			if attempt == 0 && IsFull(err) {
				err = notStored{err}
			}
			return PublishResult{}, err
		}
		if err := AwaitRetry(ctx, attempt, err); err != nil {
			return PublishResult{}, fmt.Errorf("publish to %s: %w", msg.Subject, err)
		}
	}
}

// JetStream error codes (nats-server's errors.json) that mean the stream
// or the server has no room: a store that refused the write (max
// messages, max bytes, disk), insufficient resources, or the account's
// storage limits.
const (
	errCodeStoreFailed           = 10077
	errCodeInsufficientResources = 10023
	errCodeAccountResources      = 10002
	errCodeStorageResources      = 10047
)

// IsFull reports whether a publish failed because the stream or server has
// no room for the message: retrying at once will not help, the producer
// should try again later (SMTP 452 4.3.1).
func IsFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeStoreFailed, errCodeInsufficientResources, errCodeAccountResources, errCodeStorageResources:
		return true
	}
	return false
}

// notStored is a publish the server refused for want of room at its
// first attempt (NotStored).
type notStored struct{ error }

func (e notStored) Unwrap() error { return e.error }

// NotStored reports whether err is a Publish that the stream refused as
// full at its first attempt. No attempt before it can have landed, so
// no copy of the message is in the stream: what the caller stored for
// it (a body) may be deleted at once. A full refusal after a retried
// attempt is not NotStored: the attempt that timed out may have landed.
func NotStored(err error) bool {
	var ns notStored
	return errors.As(err, &ns)
}

func retryable(err error) bool {
	if IsFull(err) {
		return false // a full stream stays full for longer than a leader election
	}
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected):
		return true
	}
	var apiErr *jetstream.APIError
	// 503: no leader yet, or JetStream is catching up.
	return errors.As(err, &apiErr) && apiErr.Code == 503
}

// DeadLetter describes why a message is being given up on.
type DeadLetter struct {
	ID        string // message id (Relay-Message-Id on the copy)
	Account   string // the DLQ subject's last token; "" means "unknown"
	Reason    string
	Class     string
	LastReply string
	First     time.Time // first attempt; zero: the time it was queued
	// Recipients, when set, makes the copy a dead letter for these of
	// the message's recipients only (HdrRecipients): the others got it.
	// Part numbers such copies of one message (RecipientParts) and is in
	// the copy's Nats-Msg-Id.
	Recipients []string
	Part       int
}

// MoveToDLQ publishes a copy of msg to MAIL_DLQ with the reason in headers,
// waits for the PubAck, then terminates the original. The original's
// headers are kept on the copy so a replay sends the same message.
func MoveToDLQ(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, dl DeadLetter) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("dead-letter: message metadata: %w", err)
	}
	out := deadLetterCopy(msg.Subject(), msg.Data(), msg.Headers(), md.Sequence.Stream, md.NumDelivered, md.Timestamp, dl)
	if _, err := publishMsg(ctx, js, out); err != nil {
		return fmt.Errorf("dead-letter copy not stored, original kept: %w", err)
	}
	if err := msg.TermWithReason(termsafe.Shorten(dl.Reason, 200)); err != nil {
		return fmt.Errorf("dead-letter copy stored, terminating original: %w", err)
	}
	return nil
}

// CopyToDLQ publishes to MAIL_DLQ the dead letter of the recipients
// dl.Recipients of msg and waits for its PubAck; the original stays, for
// the caller to ack: it went to its other recipients. The copy's
// Nats-Msg-Id is "<copied id>:rcpts:<part>:dlq" (a long copied id as a
// digest: dedupeBase), so a redelivery of the
// original that dead-letters the same recipients again (a crash, or a
// refused ack, before the ack) is deduplicated: the result says so
// (Duplicate), for the caller to count the dead letter once.
func CopyToDLQ(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, dl DeadLetter) (PublishResult, error) {
	if len(dl.Recipients) == 0 {
		return PublishResult{}, errors.New("dead-letter copy: no recipients")
	}
	md, err := msg.Metadata()
	if err != nil {
		return PublishResult{}, fmt.Errorf("dead-letter: message metadata: %w", err)
	}
	out := deadLetterCopy(msg.Subject(), msg.Data(), msg.Headers(), md.Sequence.Stream, md.NumDelivered, md.Timestamp, dl)
	res, err := publishMsg(ctx, js, out)
	if err != nil {
		return res, fmt.Errorf("dead-letter copy for %d refused recipients not stored: %w", len(dl.Recipients), err)
	}
	return res, nil
}

// RecipientParts splits refused recipients into the lists of the dead
// letters CopyToDLQ writes for them: each list, as the JSON of
// HdrRecipients, fits one header value (maxHeaderValue), so none is cut
// short. The split depends only on rcpts.
func RecipientParts(rcpts []string) [][]string {
	var parts [][]string
	var cur []string
	size := 2 // []
	for _, r := range rcpts {
		b, _ := json.Marshal(r)
		n := len(b) + 1 // and a comma
		if len(cur) > 0 && size+n > maxHeaderValue {
			parts = append(parts, cur)
			cur, size = nil, 2
		}
		cur = append(cur, r)
		size += n
	}
	if len(cur) > 0 {
		parts = append(parts, cur)
	}
	return parts
}

// ParseRecipients reads HdrRecipients: nil and no error when absent.
func ParseRecipients(hdr nats.Header) ([]string, error) {
	v := hdr.Get(HdrRecipients)
	if v == "" {
		return nil, nil
	}
	var rcpts []string
	if err := json.Unmarshal([]byte(v), &rcpts); err != nil || len(rcpts) == 0 {
		return nil, fmt.Errorf("header %s is not a JSON array of addresses", HdrRecipients)
	}
	return rcpts, nil
}

// ExpireToDLQ is MoveToDLQ for a message read from the stream rather than
// delivered to a consumer (a paused account's expired mail, which its
// lane does not fetch): the copy, its PubAck, then the original deleted
// by sequence. A crash between the two leaves the original, whose next
// expiry is deduplicated by the copy's Nats-Msg-Id.
func ExpireToDLQ(ctx context.Context, js jetstream.JetStream, m *jetstream.RawStreamMsg, dl DeadLetter) error {
	out := deadLetterCopy(m.Subject, m.Data, m.Header, m.Sequence, 0, m.Time, dl)
	if _, err := publishMsg(ctx, js, out); err != nil {
		return fmt.Errorf("dead-letter copy not stored, original kept: %w", err)
	}
	s, err := js.Stream(ctx, StreamMail)
	if err == nil {
		err = s.DeleteMsg(ctx, m.Sequence)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("dead-letter copy stored, deleting original %d: %w", m.Sequence, err)
	}
	return nil
}

// deadLetterCopy is the MAIL_DLQ copy of stream message seq (stored at
// stored, delivered delivered times).
func deadLetterCopy(subject string, data []byte, hdr nats.Header, seq, delivered uint64, stored time.Time, dl DeadLetter) *nats.Msg {
	account := dl.Account
	if account == "" {
		account = "unknown"
	}
	out := &nats.Msg{Subject: DLQPrefix + account, Data: data, Header: producerHeaders(hdr)}
	// The Relay-* headers below are the relay's account of the failure
	// (relay dlq show, list --json). A producer may set any header on its
	// message: one of these names, in any spelling, is dropped, or a
	// header this copy has no value for (Relay-Last-Reply without an SMTP
	// reply) showed the producer's.
	for k := range out.Header {
		for _, h := range append(deadLetterHeaders, HdrMessageID) {
			if strings.EqualFold(k, h) {
				delete(out.Header, k)
			}
		}
	}
	id := dl.ID
	if id == "" {
		id = "seq-" + strconv.FormatUint(seq, 10)
	}
	// The copy's dedupe key follows the stream message it copies: "<id>:dlq"
	// for an original, "<id>:replay:<n>:dlq" for a replayed copy, so a
	// replay that fails again is dead-lettered again rather than deduped.
	dedupe := id
	if nid := hdr.Get(jetstream.MsgIDHeader); nid != "" {
		dedupe = nid
	}
	dedupe = dedupeBase(dedupe)
	now := time.Now().UTC()
	first := dl.First
	if first.IsZero() {
		first = stored
	}
	// The id, the reason (which quotes the input) and the server's reply
	// come from outside: setHeader keeps them to one header line, and
	// setID escapes what would drive a terminal in the ids (a message is
	// usually dead-lettered here because Validate refused its id).
	setID(out.Header, jetstream.MsgIDHeader, dedupe+":dlq")
	if len(dl.Recipients) > 0 {
		setID(out.Header, jetstream.MsgIDHeader, dedupe+":rcpts:"+strconv.Itoa(dl.Part)+":dlq")
		b, _ := json.Marshal(dl.Recipients) // RecipientParts keeps it within a header value
		out.Header.Set(HdrRecipients, string(b))
	}
	setID(out.Header, HdrMessageID, id)
	setHeader(out.Header, HdrReason, dl.Reason)
	setHeader(out.Header, HdrClass, dl.Class)
	out.Header.Set(HdrAttempts, strconv.FormatUint(delivered, 10))
	if dl.LastReply != "" {
		setHeader(out.Header, HdrLastReply, dl.LastReply)
	}
	out.Header.Set(HdrOrigSubject, subject)
	out.Header.Set(HdrOrigSeq, strconv.FormatUint(seq, 10))
	out.Header.Set(HdrFirstAttempt, first.UTC().Format(time.RFC3339Nano))
	out.Header.Set(HdrLastAttempt, now.Format(time.RFC3339Nano))
	return out
}

// maxDedupeBase bounds the key a dead letter's Nats-Msg-Id is made of
// (dedupeBase), as setID would write it, well within maxHeaderValue.
const maxDedupeBase = 512

// dedupeBase is the key of the stream message a dead letter copies, for
// its Nats-Msg-Id "<key>:dlq" or "<key>:rcpts:<part>:dlq": the copied
// Nats-Msg-Id, or a digest of it when, written as setID writes it, it is
// longer than maxDedupeBase. A producer's Nats-Msg-Id has no length
// limit (the message id it sends in its JSON has: message.Validate);
// cut to one header value's length by setHeader, every part's key of
// such a message was the same, and MAIL_DLQ dropped all parts but the
// first as duplicates.
func dedupeBase(key string) string {
	if len(termsafe.Line(key)) <= maxDedupeBase {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// Requeue puts a fresh copy of msg at the end of its subject (delivery
// count 1, Nats-Msg-Id "<id>:requeue:<stream seq>", the id kept in
// Relay-Message-Id), waits for the PubAck, then terminates the original.
// The worker uses it for a message of a paused account that reached its
// last delivery: waiting for an account must never dead-letter mail. A
// crash between the two steps leaves the original, whose next requeue is
// deduplicated.
func Requeue(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, id string) (PublishResult, error) {
	md, err := msg.Metadata()
	if err != nil {
		return PublishResult{}, fmt.Errorf("requeue: message metadata: %w", err)
	}
	out := copyForRepublish(msg.Subject(), msg.Data(), msg.Headers(), id, fmt.Sprintf("%s:requeue:%d", id, md.Sequence.Stream))
	// The queue lifetime counts from the first queueing, not this copy.
	out.Header.Set(HdrQueued, QueuedAt(msg.Headers(), md.Timestamp).UTC().Format(time.RFC3339Nano))
	res, err := publishMsg(ctx, js, out)
	if err != nil {
		return res, fmt.Errorf("requeue: copy not stored, original kept: %w", err)
	}
	if err := msg.TermWithReason("requeued as a fresh message"); err != nil {
		return res, fmt.Errorf("requeue: copy stored, terminating original: %w", err)
	}
	return res, nil
}

// RequeueRecipients publishes a copy of msg for some of its recipients
// (HdrRecipients: rcpts, within one header, RecipientParts) at the end of
// its subject with Nats-Msg-Id msgID, the id kept in Relay-Message-Id and
// the first queue time in Relay-Queued, and waits for the PubAck. The
// original stays, for the caller to ack: it went to its other
// recipients. A copy already stored under msgID within the duplicate
// window comes back as a duplicate.
func RequeueRecipients(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, id, msgID string, rcpts []string) (PublishResult, error) {
	if len(rcpts) == 0 {
		return PublishResult{}, errors.New("requeue: no recipients")
	}
	md, err := msg.Metadata()
	if err != nil {
		return PublishResult{}, fmt.Errorf("requeue: message metadata: %w", err)
	}
	out := copyForRepublish(msg.Subject(), msg.Data(), msg.Headers(), id, msgID)
	out.Header.Set(HdrQueued, QueuedAt(msg.Headers(), md.Timestamp).UTC().Format(time.RFC3339Nano))
	b, _ := json.Marshal(rcpts) // RecipientParts keeps it within a header value
	out.Header.Set(HdrRecipients, string(b))
	res, err := publishMsg(ctx, js, out)
	if err != nil {
		return res, fmt.Errorf("copy for %d recipients refused for now not queued: %w", len(rcpts), err)
	}
	return res, nil
}

// copyForRepublish builds a new stream message from a stored one: same
// subject, data and producer headers, without the dead-letter headers, with
// its own Nats-Msg-Id and the message id kept in Relay-Message-Id.
func copyForRepublish(subject string, data []byte, hdr nats.Header, id, msgID string) *nats.Msg {
	out := &nats.Msg{Subject: subject, Data: data, Header: producerHeaders(hdr)}
	for _, h := range deadLetterHeaders {
		out.Header.Del(h)
	}
	out.Header.Del(HdrQueued) // a replay starts a fresh lifetime; Requeue sets it again
	setID(out.Header, jetstream.MsgIDHeader, msgID)
	setID(out.Header, HdrMessageID, id)
	return out
}

// producerHeaders is a copy of a stored message's headers for a new
// publish of it (a dead letter, a requeue, a replay): all but JetStream's
// own, "Nats-" and the rest of the name, which the server stores with the
// message as it was published and would read again as instructions for
// the copy. Nats-Batch-Id and Nats-Batch-Sequence, on every message of an
// atomic batch (batch.go), made MAIL_DLQ refuse the dead letter (atomic
// publish is disabled there, 10174) and MAIL take a requeue as the start
// of a batch never committed; a producer's Nats-Expected-Stream: MAIL or
// Nats-Expected-Last-Sequence failed the copy's check; Nats-TTL,
// Nats-Rollup and Nats-Schedule ask for what the streams do not allow.
// Either way the copy was never stored, and the message could not leave
// MAIL but through MaxAge, unseen. The caller sets the copy's
// Nats-Msg-Id. NATS header names are case-sensitive on the wire, but the
// prefix is compared without case so that no spelling slips through.
func producerHeaders(hdr nats.Header) nats.Header {
	out := nats.Header{}
	for k, v := range hdr {
		if len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") {
			continue
		}
		out[k] = v
	}
	return out
}

// setID sets an id header with control characters, bidirectional
// controls and invalid UTF-8 written as visible escapes (termsafe.Line):
// ids come from producers' headers as well as from validated JSON, and
// relay dlq, `nats stream get` and logs print them.
func setID(h nats.Header, key, id string) { setHeader(h, key, termsafe.Line(id)) }

// setHeader sets a NATS header to v with CR, LF and NUL replaced by
// spaces. NATS headers are MIME-style lines (like HTTP/1 headers), so a
// line break in a value taken from a message or an SMTP reply would end
// the header or add one of its own (a multi-line SMTP reply, RFC 5321
// §4.2.1, arrives with line breaks).
//
// A value is kept to maxHeaderValue bytes, so that what the relay adds to a
// copy stays within DeadLetterHeadroom whatever the reason quotes.
func setHeader(h nats.Header, key, v string) {
	h.Set(key, termsafe.Shorten(strings.TrimSpace(strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, v)), maxHeaderValue))
}

// maxHeaderValue bounds each header value the relay sets on a copy.
const maxHeaderValue = 1024

// DeadLetterHeadroom is what MAIL leaves of the server's max_payload for
// the headers a dead letter or a requeue adds to a copy of a message
// (deadLetterCopy: eleven at most, each kept to maxHeaderValue; JetStream's
// own headers of the original are dropped). A message that filled
// max_payload could be queued but never dead-lettered: its copy was
// refused as too large, and it stayed in MAIL until MaxAge dropped it,
// unseen. MAIL's MaxMsgSize (MailMaxMsgSize) refuses it at publish
// instead, where the producer hears why.
const DeadLetterHeadroom = 16 << 10

// MailMaxMsgSize is MAIL's MaxMsgSize on a server whose max_payload is
// maxPayload: DeadLetterHeadroom below it.
func MailMaxMsgSize(maxPayload int64) int32 {
	return int32(max(maxPayload-DeadLetterHeadroom, DeadLetterHeadroom))
}

// BodyMaxChunksPerObject is the body stream's MaxMsgsPerSubject. Every
// object's chunks share one subject, so this is a limit on chunks per
// object that is never reached: 1,048,576 chunks of 256 KiB
// (body.ChunkSize), against the 140 of a 35 MB body. It is set for what
// it does to storage: nats-server sizes a new stream's file blocks from
// its limits, and with no size limit but a per-subject one it takes 4 MiB
// blocks (the key-value size) instead of 8 MiB. A block being written or read is held in memory whole, and
// three 30 MB bodies stored and read at once kept about fourteen of them:
// 4 MiB blocks took relay serve's peak from 150–182 MB to 118–124 MB in
// `relay bench --size 30MB --conns 3`, and its CPU per message down by a
// third (BENCHMARKS.md, "Large messages").
const BodyMaxChunksPerObject = 1 << 20

// bodyStream is the body bucket's stream: the layout nats.go's Object
// Store makes (its name, chunk and metadata subjects, discard new and
// direct get), so jetstream.ObjectStore binds to it and reads it as its
// own, but without rollups (body.Store writes and deletes without
// them); the same replicas and file storage as MAIL;
// no age limit (bodies are deleted by the relay, never aged out under a
// queued message); and BodyMaxChunksPerObject.
func bodyStream(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              "OBJ_" + BodyBucket,
		Description:       "Relay365 bodies of large messages, named by the MAIL messages that carry them",
		Subjects:          []string{"$O." + BodyBucket + ".C.>", "$O." + BodyBucket + ".M.>"},
		MaxBytes:          -1,
		MaxMsgsPerSubject: BodyMaxChunksPerObject,
		Storage:           jetstream.FileStorage,
		Replicas:          max(replicas, 1),
		Discard:           jetstream.DiscardNew,
		// No rollups: a rollup is a header, which no subject
		// permission sees, and "Nats-Rollup: all" on any chunk
		// subject a producer may publish to would purge every body.
		// body.Store writes and deletes without them.
		AllowRollup: false,
		AllowDirect: true,
	}
}

// bodyDiff is the body stream's differs (openStream): its replicas, age
// limit or chunk limit. A bucket made by an earlier version, with nats.go's
// CreateObjectStore, has no chunk limit; its new blocks are 4 MiB from the
// server's next start after the update.
func bodyDiff(c jetstream.StreamConfig) func(have jetstream.StreamConfig) string {
	return func(have jetstream.StreamConfig) string {
		rollups := ""
		if have.AllowRollup {
			rollups = "; rollups allowed (whoever may store a body could purge them all), want none"
		}
		if have.Replicas == c.Replicas && have.Storage == c.Storage && have.MaxAge == 0 && have.MaxMsgsPerSubject == c.MaxMsgsPerSubject && !have.AllowRollup {
			return ""
		}
		chunks := "no chunk limit"
		if have.MaxMsgsPerSubject > 0 {
			chunks = fmt.Sprintf("%d chunks per object", have.MaxMsgsPerSubject)
		}
		return fmt.Sprintf("replicas %d, max age %s, %s; want %d, none, %d chunks per object%s",
			have.Replicas, have.MaxAge, chunks, c.Replicas, c.MaxMsgsPerSubject, rollups)
	}
}
