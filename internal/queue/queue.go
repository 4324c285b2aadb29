// Package queue owns everything JetStream: the embedded server, the MAIL and
// MAIL_DLQ streams, the workers' durable consumer, publishing with dedupe and
// dead-lettering.
//
// The rules it follows are DESIGN.md §7:
//   - MAIL is a WorkQueue stream on file storage; a message leaves it only
//     when a worker acks it after Office 365 answered 250, or after its copy
//     is safely in MAIL_DLQ.
//   - MAIL_DLQ has Limits retention so dead letters can be browsed and
//     replayed. The copy is published first and its PubAck awaited; only then
//     is the original terminated (Term deletes it from a WorkQueue stream), so
//     a crash between the two leaves a duplicate dead letter (deduplicated by
//     Nats-Msg-Id "<id>:dlq"), never a lost one.
//   - Publishing retries with the same Nats-Msg-Id, inside the dedupe window,
//     so a publish that failed during a leader election is not sent twice.
//   - The embedded server syncs to disk before acknowledging (SyncAlways),
//     because a mail relay promises that accepted mail survives a crash.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names users and dashboards rely on (DESIGN.md §4).
const (
	StreamMail    = "MAIL"
	StreamDLQ     = "MAIL_DLQ"
	SubjectPrefix = "mail.send."
	DLQPrefix     = "mail.dlq."
	Consumer      = "relay-workers"
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id.
	DedupeWindow = 24 * time.Hour
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
)

// Subject is the subject messages for account are published on.
func Subject(account string) string { return SubjectPrefix + account }

// StreamConfig sizes the streams. Zero values take the defaults.
type StreamConfig struct {
	Replicas int           // 1 on one machine, 3 in a cluster
	MaxAge   time.Duration // how long undeliverable mail is kept; default 7 days
	DLQAge   time.Duration // how long dead letters are kept; default 30 days
}

// EnsureStreams creates or updates MAIL and MAIL_DLQ.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxAge == 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.DLQAge == 0 {
		c.DLQAge = 30 * 24 * time.Hour
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamMail,
		Description: "Relay365 outgoing mail, one subject per account",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.MaxAge,
		Duplicates:  DedupeWindow,
		Discard:     jetstream.DiscardNew,
	})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", StreamMail, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamDLQ,
		Description: "Relay365 dead letters: mail that cannot be sent, with the reason in headers",
		Subjects:    []string{DLQPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.DLQAge,
		Duplicates:  DedupeWindow,
	})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", StreamDLQ, err)
	}
	return nil
}

// ConsumerConfig tunes the workers' durable pull consumer.
type ConsumerConfig struct {
	AckWait       time.Duration // default 60s; workers heartbeat with InProgress at AckWait/3
	MaxDeliver    int           // default 50; the worker dead-letters at the last delivery
	MaxAckPending int           // default 1000
}

func (c *ConsumerConfig) defaults() {
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 50
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 1000
	}
}

// EnsureConsumer creates or updates the durable consumer the workers share.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, c ConsumerConfig) (jetstream.Consumer, error) {
	c.defaults()
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamMail, jetstream.ConsumerConfig{
		Durable:       Consumer,
		Description:   "Relay365 workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		FilterSubject: SubjectPrefix + ">",
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", Consumer, StreamMail, err)
	}
	return cons, nil
}

// PublishResult says where a message went.
type PublishResult struct {
	Seq       uint64
	Duplicate bool
}

// Publish puts one message on mail.send.<account> with id as Nats-Msg-Id,
// retrying with the same id while the stream has no leader or the server is
// briefly unreachable (DESIGN.md §7), until ctx ends.
func Publish(ctx context.Context, js jetstream.JetStream, account, id string, data []byte) (PublishResult, error) {
	msg := &nats.Msg{Subject: Subject(account), Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	return publishMsg(ctx, js, msg)
}

// retrySchedule is the wait between publish attempts: short first, capped,
// because a leader election takes seconds, not minutes.
var retrySchedule = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second}

func publishMsg(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) (PublishResult, error) {
	for attempt := 0; ; attempt++ {
		ack, err := js.PublishMsg(ctx, msg)
		if err == nil {
			return PublishResult{Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			return PublishResult{}, fmt.Errorf("publish to %s: %w", msg.Subject, err)
		}
		wait := retrySchedule[min(attempt, len(retrySchedule)-1)]
		select {
		case <-ctx.Done():
			return PublishResult{}, fmt.Errorf("publish to %s: %w (last error: %v)", msg.Subject, ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

func retryable(err error) bool {
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
	ID        string // message id, for the copy's Nats-Msg-Id
	Account   string
	Reason    string
	Class     string
	LastReply string
	First     time.Time
}

// MoveToDLQ publishes a copy of msg to MAIL_DLQ with the reason in headers,
// waits for the PubAck, then terminates the original. The original's
// headers are kept on the copy so a replay sends the same message.
func MoveToDLQ(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, dl DeadLetter) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("dead-letter: message metadata: %w", err)
	}
	account := dl.Account
	if account == "" {
		account = "unknown"
	}
	out := &nats.Msg{Subject: DLQPrefix + account, Data: msg.Data(), Header: nats.Header{}}
	for k, v := range msg.Headers() {
		out.Header[k] = v
	}
	id := dl.ID
	if id == "" {
		id = "seq-" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	now := time.Now().UTC()
	first := dl.First
	if first.IsZero() {
		first = md.Timestamp
	}
	out.Header.Set(jetstream.MsgIDHeader, id+":dlq")
	out.Header.Set(HdrReason, dl.Reason)
	out.Header.Set(HdrClass, dl.Class)
	out.Header.Set(HdrAttempts, strconv.FormatUint(md.NumDelivered, 10))
	if dl.LastReply != "" {
		out.Header.Set(HdrLastReply, dl.LastReply)
	}
	out.Header.Set(HdrOrigSubject, msg.Subject())
	out.Header.Set(HdrOrigSeq, strconv.FormatUint(md.Sequence.Stream, 10))
	out.Header.Set(HdrFirstAttempt, first.UTC().Format(time.RFC3339Nano))
	out.Header.Set(HdrLastAttempt, now.Format(time.RFC3339Nano))
	if _, err := publishMsg(ctx, js, out); err != nil {
		return fmt.Errorf("dead-letter copy not stored, original kept: %w", err)
	}
	if err := msg.TermWithReason(truncate(dl.Reason, 200)); err != nil {
		return fmt.Errorf("dead-letter copy stored, terminating original: %w", err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
