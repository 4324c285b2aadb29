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
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
}

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
func (p *Producer) Publish(ctx context.Context, m *Message) (Result, error) {
	if err := m.Validate(); err != nil {
		return Result{}, err
	}
	data, err := m.Encode()
	if err != nil {
		return Result{}, err
	}
	res, err := queue.Publish(ctx, p.js, m.Account, m.ID, data)
	if err != nil {
		return Result{}, fmt.Errorf("%w (is relay serve running and the MAIL stream created?)", err)
	}
	return Result{ID: m.ID, Seq: res.Seq, Duplicate: res.Duplicate}, nil
}
