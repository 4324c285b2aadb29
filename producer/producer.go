// Package producer lets other Go services hand notification mail to
// Relay365: build a Message, Publish it, and JetStream holds it until a
// relay worker has delivered it through Office 365 or dead-lettered it.
//
//	nc, _ := nats.Connect(os.Getenv("RELAY_NATS_URL"))
//	p, _ := producer.New(nc)
//	res, err := p.Publish(ctx, &producer.Message{
//		ID:      "alert-7f3a",           // idempotency key: publish twice, mail once
//		Account: "alerts",
//		To:      []string{"ops@contoso.com"},
//		Subject: "CPU high on web-3",
//		Text:    "load 17.2",
//	})
//
// Publish validates first, so a bad address or a header with a line break
// is an error here rather than a dead letter later. The message id becomes
// the Nats-Msg-Id, so a retried publish inside the 24 h dedupe window is
// recognised as a duplicate (Result.Duplicate) and delivered once.
//
// The connection is yours, with whatever authentication your NATS wants
// (nats.UserCredentials, nats.UserInfo, nats.RootCAs, nats.ClientCert...).
// A producer needs only permission to publish mail.send.> and to
// subscribe to its inbox (_INBOX.>) for the JetStream acknowledgement;
// deploy/nats/auth.conf has that user.
package producer

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/queue"
)

// Message is the JSON document of docs/design.md §3.
type Message = message.Message

// Attachment is one attached file.
type Attachment = message.Attachment

// Result says where the message went.
type Result struct {
	ID        string // the message id (generated when the Message had none)
	Seq       uint64 // stream sequence in MAIL
	Duplicate bool   // the id was already published inside the dedupe window
}

// Producer publishes messages.
type Producer struct {
	js jetstream.JetStream
	// MaxSize is the largest message, counted after encoding, that
	// Publish takes; larger ones are refused with a *TooLarge before
	// anything is queued. Default message.MaxSize, Office 365's 35 MB.
	MaxSize int64
}

// TooLarge is the error for a message over Producer.MaxSize.
type TooLarge = body.TooLarge

// New wraps a NATS connection. The MAIL stream must exist (relay serve
// creates it); otherwise Publish fails with a message that says so.
func New(nc *nats.Conn) (*Producer, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Producer{js: js}, nil
}

// Publish validates m (filling m.ID when empty) and publishes it on
// mail.send.<account>, retrying with the same id while JetStream is
// briefly unavailable, until ctx ends.
//
// A message whose JSON is larger than message.InlineMax (256 KiB: large
// attachments, a big raw message) is rendered here and its content stored
// in the relay's body bucket first; the message published names it
// (docs/design.md §3.5). Its size is checked against MaxSize while it is
// stored.
func (p *Producer) Publish(ctx context.Context, m *Message) (Result, error) {
	if err := m.Validate(); err != nil {
		return Result{}, err
	}
	data, inline, err := message.EncodeInline(m)
	if err == nil && !inline {
		data, err = p.store(ctx, m)
	}
	if err != nil {
		return Result{}, err
	}
	res, err := queue.Publish(ctx, p.js, m.Account, m.ID, data)
	if err != nil {
		// A stored body nothing names is the sweeper's (a producer may
		// not delete bodies).
		return Result{}, fmt.Errorf("%w (is relay serve running and the MAIL stream created?)", err)
	}
	return Result{ID: m.ID, Seq: res.Seq, Duplicate: res.Duplicate}, nil
}

// PublishRaw publishes a complete RFC 5322 message read from r (the
// content of sendmail's stdin, say) to the given envelope recipients
// through account, its content in the body store when it is large.
// Line endings are made CRLF.
//
// The message is read into memory first (at most MaxSize and one octet):
// it is checked whole before anything is stored, because a producer may
// store bodies but not delete them, and a store that failed half-way
// would leave chunks behind.
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

// store renders m, stores its content and returns the JSON of the message
// that names it.
func (p *Producer) store(ctx context.Context, m *Message) ([]byte, error) {
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
	if int64(len(raw)) > p.maxSize() {
		return nil, &TooLarge{Size: int64(len(raw)), Limit: p.maxSize()}
	}
	cw := message.NewCRLFWriter(io.Discard)
	if _, err := cw.Write(raw); err != nil {
		return nil, err
	}
	s, err := body.Open(ctx, p.js)
	if err != nil {
		return nil, err
	}
	env := &Message{ID: m.ID, Account: m.Account, To: m.To, Cc: m.Cc, Bcc: m.Bcc}
	if len(env.To)+len(env.Cc)+len(env.Bcc) == 0 {
		env.To = rcpts // a raw message's own To, Cc and Bcc fields
	}
	return s.StoreMessage(ctx, env, bytes.NewReader(raw), p.maxSize())
}
