// Package limits tells a producer, before it queues, the one fact of an
// account it needs to refuse a message itself instead of leaving it to a
// dead letter: the largest message the account may send
// (account.Account.MaxMessageBytes, docs/design.md §3.6).
//
// Producers may not read the account registry (relay_accounts holds
// mailboxes, tenants, client ids and endpoints: SECURITY.md), so relay
// serve answers for it. Every process of the workers role runs the
// relay-limits micro service, whose one endpoint answers a request on
// relay.v1.limits.<alias> (any body) with
//
//	{"account": "alerts", "max_message_bytes": 10485760}
//
// and nothing else of the account. An unknown alias is a micro error 404
// ("unknown account ..."), a subject that names no valid alias 400, a
// registry that did not answer 503. Replicas share the queue group "q":
// each request is answered once.
//
// # Who may ask, and where the answer goes
//
// Producers may publish relay.v1.limits.* (and only that besides their
// mail); only workers may subscribe to it, so no one else can pose as the
// service. The service answers through the requester's reply subject,
// which the requester chooses: under an external server the worker
// answers with allow_responses, and under the embedded one with the
// relay's own all-powerful connection. A reply subject of
// "$JS.API.STREAM.DELETE.MAIL" would make the relay delete its own queue,
// one of "mail.dlq.x" write a dead letter. So the service answers only to
// a reply inbox: a subject under "_INBOX." (nats.go's default) or
// "_INBOX_producer." (the producer role's prefix, deploy/nats/auth.conf);
// any other request is dropped unanswered, with a warning in the log.
//
// Lookup is the client side; the producer package caches its answers.
package limits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/message"
)

// Names of the service and its subject.
const (
	ServiceName    = "relay-limits"
	ServiceVersion = "1.0.0"
	// SubjectPrefix: a request for account alias goes to
	// SubjectPrefix + "." + alias (Subject).
	SubjectPrefix = "relay.v1.limits"
)

// Error codes of the service (micro's Nats-Service-Error-Code header).
const (
	CodeBadRequest  = "400" // the subject names no valid alias
	CodeNotFound    = "404" // no account by that alias
	CodeUnavailable = "503" // the registry did not answer
)

// Default is the limit of an account that states none, and what a
// producer assumes when no relay answers: Office 365's 35 MB.
const Default = int64(message.MaxSize)

// Reply is the answer: the account's alias and its size limit in octets,
// counted after encoding. It is all a producer learns of the account.
type Reply struct {
	Account         string `json:"account"`
	MaxMessageBytes int64  `json:"max_message_bytes"`
}

// Subject is where a request for alias goes.
func Subject(alias string) string { return SubjectPrefix + "." + alias }

// replyPrefixes are the reply subjects the service answers to: inboxes.
var replyPrefixes = []string{nats.InboxPrefix, "_INBOX_producer."}

// ReplyAllowed reports whether the service answers to reply subject s.
func ReplyAllowed(s string) bool {
	for _, p := range replyPrefixes {
		if strings.HasPrefix(s, p) && len(s) > len(p) {
			return true
		}
	}
	return false
}

// Service is one replica of relay-limits.
type Service struct {
	micro    micro.Service
	accounts *account.Registry
	log      zerolog.Logger
}

// Start adds the relay-limits service on nc, answering from accounts.
func Start(nc *nats.Conn, accounts *account.Registry, instance string, log zerolog.Logger) (*Service, error) {
	if nc == nil || accounts == nil {
		return nil, errors.New("limits.Start: a connection and the account registry are required")
	}
	s := &Service{accounts: accounts, log: log.With().Str("component", "limits-service").Logger()}
	svc, err := micro.AddService(nc, micro.Config{
		Name: ServiceName, Version: ServiceVersion,
		Description: "Relay365 account limits for producers: max_message_bytes",
		Metadata:    map[string]string{"instance": instance},
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", ServiceName, err)
	}
	if err := svc.AddEndpoint("limits", micro.HandlerFunc(s.handle), micro.WithEndpointSubject(SubjectPrefix+".*")); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("%s endpoint %s.*: %w", ServiceName, SubjectPrefix, err)
	}
	s.micro = svc
	// The server has the endpoint's subscription once this returns: a
	// producer asking right after is answered, not told there are no
	// responders (and left to the 35 MB fallback).
	if err := nc.Flush(); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("start %s: %w", ServiceName, err)
	}
	return s, nil
}

// Close stops answering.
func (s *Service) Close() error { return s.micro.Stop() }

// Stats are the micro endpoint statistics of this replica.
func (s *Service) Stats() micro.Stats { return s.micro.Stats() }

// lookupTimeout bounds the registry read behind one answer.
const lookupTimeout = 5 * time.Second

func (s *Service) handle(req micro.Request) {
	if !ReplyAllowed(req.Reply()) {
		// Not an inbox: answering could publish anywhere the relay may
		// (package documentation). The subject is the requester's text:
		// zerolog quotes it.
		s.log.Warn().Str("subject", req.Subject()).Str("reply", req.Reply()).Msg("limits request with a reply subject that is not an inbox: not answered")
		return
	}
	alias := strings.TrimPrefix(req.Subject(), SubjectPrefix+".")
	if err := account.ValidateAlias(alias); err != nil {
		_ = req.Error(CodeBadRequest, err.Error(), nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	a, err := s.accounts.Get(ctx, alias)
	switch {
	case errors.Is(err, account.ErrNotFound):
		_ = req.Error(CodeNotFound, fmt.Sprintf("unknown account %q (add it with authtool login)", alias), nil)
		return
	case err != nil:
		s.log.Warn().Err(err).Str("account", alias).Msg("limits request: account registry did not answer")
		_ = req.Error(CodeUnavailable, "the account registry did not answer; try again", nil)
		return
	}
	_ = req.RespondJSON(Reply{Account: alias, MaxMessageBytes: a.SizeLimit()})
}

// UnknownAccount is the service's answer for an alias it does not know.
type UnknownAccount struct{ Account string }

func (e *UnknownAccount) Error() string {
	return fmt.Sprintf("unknown account %q (add it with authtool login)", e.Account)
}

// Lookup asks relay serve for alias's size limit. An error means no
// limit was learnt: *UnknownAccount when the service does not know the
// alias, nats.ErrNoResponders when no relay serve answers (the caller
// decides what to assume; the producer package assumes Default).
func Lookup(ctx context.Context, nc *nats.Conn, alias string) (int64, error) {
	if !message.ValidAccount(alias) {
		return 0, &message.Invalid{Field: "account", Reason: fmt.Sprintf("%q is not an account alias", alias)}
	}
	msg, err := nc.RequestWithContext(ctx, Subject(alias), nil)
	if err != nil {
		return 0, fmt.Errorf("ask %s for the limits of account %s: %w", ServiceName, alias, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		if code == CodeNotFound {
			return 0, &UnknownAccount{Account: alias}
		}
		return 0, fmt.Errorf("%s, account %s: %s %s", ServiceName, alias, code, msg.Header.Get(micro.ErrorHeader))
	}
	var r Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return 0, fmt.Errorf("%s, account %s: undecodable answer: %w", ServiceName, alias, err)
	}
	if r.Account != alias || r.MaxMessageBytes <= 0 || r.MaxMessageBytes > Default {
		return 0, fmt.Errorf("%s, account %s: answer for account %q with limit %d is not an answer to this request", ServiceName, alias, r.Account, r.MaxMessageBytes)
	}
	return r.MaxMessageBytes, nil
}
