package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetterEntry is one message in MAIL_DLQ with its dead-letter headers
// decoded.
type DeadLetterEntry struct {
	Seq          uint64    // sequence in MAIL_DLQ
	Stored       time.Time // when it was dead-lettered, UTC
	Account      string    // from the subject mail.dlq.<account>
	ID           string    // message id
	Reason       string
	Class        string
	LastReply    string
	Attempts     int
	OrigSubject  string
	OrigSeq      uint64
	FirstAttempt time.Time
	LastAttempt  time.Time
	Header       nats.Header
	Data         []byte
}

// DeadLetterFilter selects dead letters; empty fields match all.
type DeadLetterFilter struct {
	Account string // exact alias
	Reason  string // case-insensitive substring of the reason
	// HeadersOnly leaves each entry's Data nil: JetStream sends the
	// headers alone, for a caller that needs only what they say (relay
	// dlq list's table, replay --all's choice). Dead letters can be as
	// large as MAIL's inline messages (max_payload, 8 MiB), and after an
	// incident there are thousands.
	HeadersOnly bool
}

func (f DeadLetterFilter) subject() string {
	if f.Account == "" {
		return DLQPrefix + ">"
	}
	return DLQPrefix + f.Account
}

func (f DeadLetterFilter) match(e DeadLetterEntry) bool {
	return f.Reason == "" || strings.Contains(strings.ToLower(e.Reason), strings.ToLower(f.Reason))
}

func newEntry(seq uint64, stored time.Time, subject string, hdr nats.Header, data []byte) DeadLetterEntry {
	e := DeadLetterEntry{
		// UTC, as GetDeadLetter's stored time is: a consumer's delivery
		// metadata gives it in the host's zone, and relay dlq list
		// --json printed that where show --json printed UTC.
		Seq: seq, Stored: stored.UTC(), Account: strings.TrimPrefix(subject, DLQPrefix),
		ID: hdr.Get(HdrMessageID), Reason: hdr.Get(HdrReason), Class: hdr.Get(HdrClass),
		LastReply: hdr.Get(HdrLastReply), OrigSubject: hdr.Get(HdrOrigSubject),
		Header: hdr, Data: data,
	}
	if e.ID == "" { // dead-lettered by an earlier version
		e.ID = strings.TrimSuffix(hdr.Get(jetstream.MsgIDHeader), ":dlq")
	}
	e.Attempts, _ = strconv.Atoi(hdr.Get(HdrAttempts))
	e.OrigSeq, _ = strconv.ParseUint(hdr.Get(HdrOrigSeq), 10, 64)
	e.FirstAttempt, _ = time.Parse(time.RFC3339Nano, hdr.Get(HdrFirstAttempt))
	e.LastAttempt, _ = time.Parse(time.RFC3339Nano, hdr.Get(HdrLastAttempt))
	return e
}

// ListDeadLetters returns the dead letters matching f, oldest first. It
// reads MAIL_DLQ with an ordered consumer (no state left on the server).
// With their content (f.HeadersOnly false) it holds every one in memory:
// EachDeadLetter holds one pull at a time.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, f DeadLetterFilter) ([]DeadLetterEntry, error) {
	out := []DeadLetterEntry{}
	err := EachDeadLetter(ctx, js, f, func(e DeadLetterEntry) error {
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EachDeadLetter calls fn with each dead letter matching f, oldest first,
// as ListDeadLetters lists them, holding no more of them than one pull
// (listPullBytes): after an incident there are thousands, each as large
// as MAIL's inline messages. An error of fn ends it.
func EachDeadLetter(ctx context.Context, js jetstream.JetStream, f DeadLetterFilter, fn func(DeadLetterEntry) error) error {
	pending, err := countDeadLetters(ctx, js, f)
	if err != nil {
		return err
	}
	if pending == 0 {
		return nil
	}
	cons, err := js.OrderedConsumer(ctx, StreamDLQ, jetstream.OrderedConsumerConfig{FilterSubjects: []string{f.subject()}, HeadersOnly: f.HeadersOnly})
	if err != nil {
		return fmt.Errorf("read %s: %w", StreamDLQ, err)
	}
	maxBytes := listPullBytes(js.Conn().MaxPayload())
	// A pull asks for as many as were pending when last counted, and the
	// server holds it open until that many came or it expires: dead
	// letters removed since the count (replayed, purged) cost the whole
	// expiry, and with none left the read failed. So the read ends where
	// nothing is pending any more: at a pull whose consumer (an ordered
	// consumer makes one afresh for each) found nothing, and after the
	// message that says nothing follows it, without waiting out the rest
	// of its pull.
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 256)), jetstream.FetchMaxBytes(maxBytes), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read %s: %w", StreamDLQ, err)
		}
		if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 {
			return nil // all gone since they were counted
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("read %s: %w", StreamDLQ, err)
			}
			pending = md.NumPending
			data := m.Data()
			if f.HeadersOnly {
				data = nil // empty, and Nats-Msg-Size in the headers says how large
			}
			if e := newEntry(md.Sequence.Stream, md.Timestamp, m.Subject(), m.Headers(), data); f.match(e) {
				if err := fn(e); err != nil {
					return err
				}
			}
			if pending == 0 {
				return nil // the last one: the rest of the pull would only wait
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read %s: %w", StreamDLQ, err)
		}
		if got == 0 {
			// Removed after this pull's consumer counted them: nothing
			// left is no error.
			if left, err := countDeadLetters(ctx, js, f); err == nil && left == 0 {
				return nil
			}
			return fmt.Errorf("read %s: %d dead letters announced, none arrived", StreamDLQ, pending)
		}
	}
	return nil
}

// listPullBytes bounds the bytes of one pull of ListDeadLetters. MAIL
// takes inline messages up to the server's max_payload (MaxPayload on the
// embedded server), so 256 dead letters can weigh gigabytes: with more
// sent at once than the server lets a client have pending (max_pending,
// 64 MiB by default) the server closed the connection as a slow
// consumer, the client reconnected, and the pull ended only at its
// 5-second expiry, with what had arrived. 150 dead letters of 1 MiB took
// 20 seconds so; a few hundred outlasted relay dlq's --timeout. A pull
// that reaches the bound ends at once (JetStream's 409 "Message Size
// Exceeds MaxBytes"), and the next goes on. The bound exceeds the largest
// message the server takes, subject and headers included, or a pull
// could not take even that one.
func listPullBytes(maxPayload int64) int {
	return int(max(16<<20, maxPayload+64<<10))
}

// ReplaySubject is the subject a replay of e publishes on: the one it was
// queued on, or its account's when that was not a mail subject.
func (e DeadLetterEntry) ReplaySubject() string {
	if strings.HasPrefix(e.OrigSubject, SubjectPrefix) {
		return e.OrigSubject
	}
	return Subject(e.Account)
}

// ReplayAccount is the account a replay of e queues mail for.
func (e DeadLetterEntry) ReplayAccount() string {
	return strings.TrimPrefix(e.ReplaySubject(), SubjectPrefix)
}

// ErrNoDeadLetter is GetDeadLetter's (and ReplayDeadLetter's) error for a
// sequence MAIL_DLQ does not hold: never stored, or replayed or purged
// since it was listed.
var ErrNoDeadLetter = errors.New("no dead letter")

// ErrDeadLetterUnknown is in ReplayDeadLetterWith's error when a replay
// failed before queuing its copy and the question whether the dead
// letter is still in MAIL_DLQ could not be answered: it may be kept, or
// gone (a purge meanwhile). Nothing was queued.
var ErrDeadLetterUnknown = errors.New("whether the dead letter is still in " + StreamDLQ + " could not be read")

// GetDeadLetter returns the dead letter at seq.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetterEntry, error) {
	s, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		return DeadLetterEntry{}, fmt.Errorf("open %s: %w", StreamDLQ, err)
	}
	m, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetterEntry{}, fmt.Errorf("%w with sequence %d in %s: never stored, or replayed or purged since (see relay dlq list)", ErrNoDeadLetter, seq, StreamDLQ)
	}
	if err != nil {
		return DeadLetterEntry{}, fmt.Errorf("read %s sequence %d: %w", StreamDLQ, seq, err)
	}
	return newEntry(m.Sequence, m.Time, m.Subject, m.Header, m.Data), nil
}

// ReplayDeadLetter publishes the dead letter at seq again on
// mail.send.<account> as a new message, with a fresh delivery count and
// Nats-Msg-Id "<id>:replay:<seq>" (the message id, and so its Message-ID
// and idempotency marker, stay the same), waits for the PubAck, and only
// then deletes it from MAIL_DLQ. If the delete fails the replayed copy is
// already queued; replaying the same seq again within the dedupe window is
// then recognised as a duplicate, not queued twice.
func ReplayDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (PublishResult, error) {
	return ReplayDeadLetterWith(ctx, js, seq, nil)
}

// ReplayDeadLetterWith is ReplayDeadLetter queuing what prepare returns
// for the dead letter it read instead of its data (nil: the data). relay
// dlq replay gives a large message's body a name of its own there
// (body.Store.Copy), so that a purge of the dead letter racing the replay
// cannot delete the body the queued copy names. An error of prepare
// keeps the dead letter, and nothing is queued.
func ReplayDeadLetterWith(ctx context.Context, js jetstream.JetStream, seq uint64, prepare func(DeadLetterEntry) ([]byte, error)) (PublishResult, error) {
	e, err := GetDeadLetter(ctx, js, seq)
	if err != nil {
		return PublishResult{}, err
	}
	data := e.Data
	if prepare != nil {
		if data, err = prepare(e); err != nil {
			// A purge since the read above takes the body with the dead
			// letter, and prepare fails for it: the dead letter is then
			// not kept but gone. Asked with a fresh context (checkCtx):
			// prepare may have failed because ctx ran out.
			cctx, cancel := checkCtx(ctx)
			defer cancel()
			switch _, gerr := GetDeadLetter(cctx, js, seq); {
			case errors.Is(gerr, ErrNoDeadLetter):
				return PublishResult{}, gerr
			case gerr != nil:
				return PublishResult{}, fmt.Errorf("replay %d: %w (not queued; %w: %v)", seq, err, ErrDeadLetterUnknown, gerr)
			}
			return PublishResult{}, fmt.Errorf("replay %d: %w (the dead letter is kept)", seq, err)
		}
	}
	out := copyForRepublish(e.ReplaySubject(), data, e.Header, e.ID, fmt.Sprintf("%s:replay:%d", e.ID, seq))
	res, err := publishMsg(ctx, js, out)
	if err != nil {
		return res, fmt.Errorf("replay %d: %w (the dead letter is kept)", seq, err)
	}
	s, err := js.Stream(ctx, StreamDLQ)
	if err == nil {
		err = s.DeleteMsg(ctx, seq)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && s != nil {
		// Removed meanwhile (a purge, another replay): the server says
		// so with a generic deletion error (10057, "no message found"),
		// not ErrMsgNotFound, so ask whether it is still there, with a
		// fresh context: the delete may have failed because ctx ran out.
		cctx, cancel := checkCtx(ctx)
		defer cancel()
		if _, gerr := s.GetMsg(cctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			err = nil
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return res, fmt.Errorf("replay %d: queued as %s sequence %d, but not removed from %s: %w", seq, StreamMail, res.Seq, StreamDLQ, err)
	}
	return res, nil
}

// checkTimeout bounds the question, after a replay's step failed,
// whether its dead letter is still there.
const checkTimeout = 5 * time.Second

// checkCtx is a context for that question: ctx's values without its
// cancellation or deadline, for at most checkTimeout. A step that failed
// because ctx ran out (its --timeout spent on a slow store) would
// otherwise fail the question too, and the answer "kept" would be a
// guess: wrong for a dead letter purged meanwhile.
func checkCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
}

// PurgeDeadLetters deletes the dead letters of account ("" for all) up to
// and including sequence through: those the caller listed (and showed),
// not one dead-lettered since, which stays. It returns how many it purged
// (the server's count: one a replay removed meanwhile is not among them)
// and how many of the account's stay.
func PurgeDeadLetters(ctx context.Context, js jetstream.JetStream, account string, through uint64) (purged, kept uint64, err error) {
	f := DeadLetterFilter{Account: account}
	if through == 0 {
		kept, err = countDeadLetters(ctx, js, f)
		return 0, kept, err
	}
	if _, err := js.Stream(ctx, StreamDLQ); err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", StreamDLQ, err)
	}
	// A purge request's sequence purges the messages below it. The
	// request is made here, not with jetstream.Stream.Purge, for the
	// answer's count, which Purge drops: "before minus after" counted a
	// dead letter a replay removed meanwhile as purged.
	req := jetstream.StreamPurgeRequest{Sequence: through + 1}
	if account != "" {
		req.Subject = f.subject()
	}
	if purged, err = purgeRequest(ctx, js, StreamDLQ, req); err != nil {
		return 0, 0, fmt.Errorf("purge %s: %w", StreamDLQ, err)
	}
	kept, err = countDeadLetters(ctx, js, f)
	if err != nil {
		return purged, 0, fmt.Errorf("purged %d from %s, but cannot count what is left: %w", purged, StreamDLQ, err)
	}
	return purged, kept, nil
}

// purgeRequest sends JetStream's purge request for stream and returns
// how many messages the server purged.
func purgeRequest(ctx context.Context, js jetstream.JetStream, stream string, req jetstream.StreamPurgeRequest) (uint64, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	if _, ok := ctx.Deadline(); !ok {
		// as jetstream's API calls without a deadline
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, js.Options().DefaultTimeout)
		defer cancel()
	}
	msg, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, body)
	if err != nil {
		return 0, err
	}
	var resp struct {
		Error  *jetstream.APIError `json:"error"`
		Purged uint64              `json:"purged"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("purge answer: %w", err)
	}
	if resp.Error != nil {
		return 0, resp.Error
	}
	return resp.Purged, nil
}

// countDeadLetters counts the dead letters on f's subject (the reason
// filter is not applied).
func countDeadLetters(ctx context.Context, js jetstream.JetStream, f DeadLetterFilter) (uint64, error) {
	counts, err := CountByAccount(ctx, js, StreamDLQ)
	if err != nil {
		return 0, err
	}
	if f.Account != "" {
		return counts[f.Account], nil
	}
	var n uint64
	for _, c := range counts {
		n += c
	}
	return n, nil
}

// CountByAccount counts the messages in stream (StreamMail or StreamDLQ)
// per account alias, from the stream's per-subject state: one request,
// however many messages are stored.
func CountByAccount(ctx context.Context, js jetstream.JetStream, stream string) (map[string]uint64, error) {
	prefix := SubjectPrefix
	if stream == StreamDLQ {
		prefix = DLQPrefix
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", stream, err)
	}
	out := make(map[string]uint64, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		out[strings.TrimPrefix(subj, prefix)] += n
	}
	return out, nil
}
