package relay

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"relay365/internal/account"
	"relay365/internal/body"
	"relay365/internal/message"
	"relay365/internal/pacing"
	"relay365/internal/queue"
	"relay365/internal/smtpclient"
	"relay365/internal/submit"
	"relay365/internal/token"
)

// attempt is one delivery of one stream message.
type attempt struct {
	msg       jetstream.Msg
	meta      *jetstream.MsgMetadata
	id        string
	log       zerolog.Logger
	first     time.Time
	started   time.Time        // on the engine's clock
	probe     bool             // the paused lane's probe message
	duplicate bool             // every transaction was already accepted earlier
	slot      *slot            // the message's claim on the lane's sessions
	body      *message.BodyRef // the stored content, deleted once acked
	unclaim   func()           // ends the handler's claim on the stream sequence (Engine.claim) and on its id (claimID); more calls do nothing
	idKey     string           // the id this handler claimed (Engine.claimID); "" before
	queued    time.Time        // when the message was first queued (queue.QueuedAt): its expiry, and the Date it lacks
	// markID keys the idempotency markers: the id, or for a message for
	// some of its recipients only (queue.HdrRecipients) the id with a
	// digest of those (recipientsID), so its markers are its own.
	markID string
	// refused are, by batch, the recipients the server refused at RCPT
	// while it took the others of the batch (now, or at an earlier
	// attempt: the batch's marker); finish dead-letters them.
	refused byBatch
	// deferred are, by batch, the recipients refused for now (a 4xx
	// about them alone) while the others took the message; finish
	// queues a copy for them.
	deferred byBatch
	marked   map[int]*sentMarker // markers of sent batches with refusals (SentMarkers.unsent)
}

// refusal is a recipient refused at RCPT with a reply about it alone.
type refusal struct {
	rcpt  string
	reply string // "" when read from a marker (replies are not kept there)
}

// recipientsID is the marker key of a message for some of its recipients
// only (a dead letter of refused recipients, replayed): the id and a
// digest of those recipients. Under the plain id the original's markers
// would say it was sent already; several such copies of one message (a
// replay refused again for fewer) each get their own.
func recipientsID(id string, rcpts []string) string {
	keys := make([]string, len(rcpts))
	for i, r := range rcpts {
		keys[i] = strings.ToLower(r)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
	}
	return id + ":rcpts:" + hex.EncodeToString(h.Sum(nil)[:8])
}

// onlyTo keeps of r's envelope recipients those named in only
// (queue.HdrRecipients). A name that is not one of the message's
// recipients is ignored: the header can narrow a message, never widen it.
func onlyTo(r *message.Rendered, only []string) error {
	want := make(map[string]bool, len(only))
	for _, a := range only {
		want[strings.ToLower(a)] = true
	}
	var keep []string
	for _, a := range r.Rcpts {
		if want[strings.ToLower(a)] {
			keep = append(keep, a)
		}
	}
	if len(keep) == 0 {
		return &message.Invalid{Field: "to", Reason: "header " + queue.HdrRecipients + " names none of the message's recipients"}
	}
	r.Rcpts = keep
	return nil
}

// messageID is the message's idempotency key: the JSON id, else the id a
// dead letter, replay or requeue carried along, else the Nats-Msg-Id, else
// (a bare `nats pub`) one derived from the stream message (fallbackID) —
// stable across redeliveries.
// An id taken from a header is not trusted more than a JSON one:
// Validate refuses control characters in it (message.CheckID), so the
// message is dead-lettered as invalid, and queue.MoveToDLQ stores the id
// escaped; logs quote it (zerolog escapes control characters).
func messageID(jsonID string, hdr nats.Header, seq uint64, stored time.Time, data []byte) string {
	for _, id := range []string{jsonID, hdr.Get(queue.HdrMessageID), hdr.Get(jetstream.MsgIDHeader)} {
		if id != "" {
			return id
		}
	}
	return fallbackID(seq, stored, data)
}

// fallbackID is the key of a message that came with no id:
// "seq-<stream sequence>-<16 hex digits>", the digits a digest of the
// sequence, the time the server stored it and its content. The sequence
// alone ("seq-<n>") was a key any producer could name in advance (the
// sequences are consecutive): a message of its own with that id, sent
// first, left the id-less one marked as already sent. The digest is the
// same at every delivery of the stream message; a requeue, dead letter
// or replay carries the key along in Relay-Message-Id.
func fallbackID(seq uint64, stored time.Time, data []byte) string {
	h := sha256.New()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seq)
	binary.BigEndian.PutUint64(b[8:], uint64(stored.UnixNano()))
	h.Write(b[:])
	h.Write(data)
	return "seq-" + strconv.FormatUint(seq, 10) + "-" + hex.EncodeToString(h.Sum(nil)[:8])
}

func (l *lane) handle(msg jetstream.Msg, probe bool, sl *slot) {
	meta, err := msg.Metadata()
	if err != nil {
		l.log.Error().Err(err).Msg("message without metadata; leaving it for redelivery")
		return
	}
	if !l.e.claim(meta.Sequence.Stream) {
		// JetStream delivered the message again while a handler of this
		// process still has it: its AckWait ran out unrenewed (finish
		// heartbeats nothing while a dead letter or a requeue waits for
		// its PubAck; a NATS outage), or its consumer was made anew (an
		// account removed and added again: the old lane deletes it under
		// the new one, which makes it again from the stream's first
		// message). This delivery must not send it (a second copy before
		// the first's marker, or one the first is dead-lettering), nor
		// ack, nak or term it: the server keys those by stream sequence,
		// so they would end or requeue the message under its handler. It
		// is left unanswered. The first handler's heartbeats, ack, nak or
		// term apply to every delivery of the sequence; if its outcome is
		// lost (the consumer deleted meanwhile), AckWait brings the
		// message back once more, and the markers tell what was sent.
		l.log.Warn().Uint64("stream_seq", meta.Sequence.Stream).Uint64("attempt", meta.NumDelivered).
			Msg("delivered again while this process still handles it: left to that handler")
		if probe {
			l.probeDone() // the next message probes
		}
		return
	}
	a := &attempt{msg: msg, meta: meta, probe: probe, slot: sl, id: messageID("", msg.Headers(), meta.Sequence.Stream, meta.Timestamp, msg.Data()), started: l.e.clock.Now()}
	a.unclaim = sync.OnceFunc(func() {
		if a.idKey != "" {
			l.e.unclaimID(a.idKey, meta.Sequence.Stream)
		}
		l.e.unclaim(meta.Sequence.Stream)
	})
	defer a.unclaim()
	a.first = l.firstAttempt(meta.Sequence.Stream, meta.NumDelivered)
	a.log = l.attemptLog(a)
	if a.queued = queue.QueuedAt(msg.Headers(), meta.Timestamp); l.e.expired(a.queued) {
		l.expire(a, a.queued)
		return
	}
	if meta.NumDelivered >= uint64(2*l.e.cfg.MaxDeliver) {
		if l.pausedNow() {
			// Its requeues were refused: waiting for an account never
			// dead-letters mail, so it is requeued (or tried again).
			l.keepQueued(a, a.log.Warn(), true, l.e.cfg.Retry.Delay(1))
			if a.probe {
				l.probeDone() // the next message probes
			}
			return
		}
		l.giveUp(a)
		return
	}

	stopBeat := heartbeat(l.e.sendCtx, msg, l.e.cfg.AckWait/3)
	start := time.Now()
	err = l.deliver(a)
	stopBeat()
	l.e.metrics.duration.Observe(time.Since(start).Seconds())
	l.finish(a, err)
}

// claim makes the caller the handler of stream message seq, until
// unclaim; false when a handler of this process already has it.
func (e *Engine) claim(seq uint64) bool {
	e.hmu.Lock()
	defer e.hmu.Unlock()
	if _, ok := e.handling[seq]; ok {
		return false
	}
	e.handling[seq] = struct{}{}
	return true
}

func (e *Engine) unclaim(seq uint64) {
	e.hmu.Lock()
	delete(e.handling, seq)
	e.hmu.Unlock()
}

// claimID makes stream message seq the one of this process that sends
// message id of account alias, until unclaimID; false when another stream
// message with that id has it. It returns the claim's key.
func (e *Engine) claimID(alias, id string, seq uint64) (string, bool) {
	key := alias + "\x00" + id
	e.hmu.Lock()
	defer e.hmu.Unlock()
	if held, ok := e.ids[key]; ok && held != seq {
		return "", false
	}
	e.ids[key] = seq
	return key, true
}

func (e *Engine) unclaimID(key string, seq uint64) {
	e.hmu.Lock()
	if e.ids[key] == seq {
		delete(e.ids, key)
	}
	e.hmu.Unlock()
}

// byBatch are refusals by recipient batch: an attempt's refused and its
// deferred recipients.
type byBatch map[int][]refusal

// add records a recipient of batch refused at RCPT.
func (m *byBatch) add(batch int, r refusal) {
	if *m == nil {
		*m = make(byBatch)
	}
	(*m)[batch] = append((*m)[batch], r)
}

// addMarked records the recipients of batch at positions, as a sent
// batch's marker keeps them (sentMarker.Refused, .Deferred); a position
// batches do not have is passed over.
func (m *byBatch) addMarked(batches [][]string, batch int, positions []int) {
	for _, p := range positions {
		if batch < len(batches) && p >= 0 && p < len(batches[batch]) {
			m.add(batch, refusal{rcpt: batches[batch][p]})
		}
	}
}

// inOrder is the refusals in batch order, as the markers would give them
// again: the copies' split, and so their dedupe keys, are the same at a
// redelivery.
func (m byBatch) inOrder() []refusal {
	var out []refusal
	for _, b := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[b]...)
	}
	return out
}

// nak gives the message back to the stream after delay (0: at once). The
// handler's claim on the stream sequence ends first: the delivery the nak
// asks for is the next attempt, not a second one, and may arrive before
// this handler has returned (a plain Nak, a short retry delay).
func (a *attempt) nak(delay time.Duration) {
	a.unclaim()
	if delay <= 0 {
		_ = a.msg.Nak()
		return
	}
	_ = a.msg.NakWithDelay(delay)
}

// attemptLog is the lane's logger with an attempt's fixed keys.
func (l *lane) attemptLog(a *attempt) zerolog.Logger {
	return l.log.With().Uint64("stream_seq", a.meta.Sequence.Stream).Uint64("attempt", a.meta.NumDelivered).Str("msg_id", a.id).Logger()
}

// deliver runs one attempt: decode, validate, render, then one SMTP
// transaction per recipient batch not yet accepted. nil means every batch
// is accepted (now or before).
func (l *lane) deliver(a *attempt) error {
	acct, gen := l.accountGen()
	m, err := message.Decode(a.msg.Data())
	if err != nil {
		return err
	}
	if len(m.Unknown) > 0 {
		l.unknownFields(m.Unknown)
	}
	if m.ID != "" && m.ID != a.id {
		a.id = m.ID
		a.log = l.attemptLog(a) // not With(): that would add a second msg_id
	}
	m.ID = a.id
	only, err := queue.ParseRecipients(a.msg.Headers())
	if err != nil {
		return &message.Invalid{Field: "to", Reason: err.Error()}
	}
	a.markID = a.id
	if only != nil {
		a.markID = recipientsID(a.id, only)
	}
	// The markers below are read once, now: another copy of the message
	// being sent meanwhile would not show in them.
	key, ok := l.e.claimID(l.alias, a.markID, a.meta.Sequence.Stream)
	if !ok {
		return errSameID
	}
	a.idKey = key
	if m.Account == "" {
		m.Account = l.alias
	}
	if m.Account != l.alias {
		return &message.Invalid{Field: "account", Reason: fmt.Sprintf("%q does not match the subject's account %q", m.Account, l.alias)}
	}
	if err := m.Validate(); err != nil {
		return err
	}
	sender := message.Sender{Mailbox: acct.Mailbox, Policy: acct.FromPolicy, SendAs: acct.SendAs}
	// A message without a Date field is dated when it was queued, its
	// origination (RFC 5322 §3.6.1: when the message was ready to be
	// sent), not when it leaves: after a pause or retries the Date would
	// be hours late, and a message partly sent before would carry another
	// Date in each batch. The SMTP front door dates its messages itself.
	var r *message.Rendered
	if m.Body != nil {
		r, err = l.renderStored(m, sender, a.queued)
	} else {
		r, err = message.Render(m, sender, a.queued)
	}
	if err != nil {
		return err
	}
	if only != nil {
		if err := onlyTo(r, only); err != nil {
			return err
		}
	}
	if err := checkSize(m, r, acct); err != nil {
		return err
	}
	a.body = m.Body
	batches, todo, first, err := l.lookupAndReserve(a, acct, r)
	a.slot.setPrepared()
	if err != nil {
		return err
	}
	for i, m := range a.marked {
		// Sent at an earlier attempt to all but these: their dead
		// letter, or the copy queued for them, is still to be stored
		// (deduplicated if it was).
		a.refused.addMarked(batches, i, m.Refused)
		a.deferred.addMarked(batches, i, m.Deferred)
	}
	if len(todo) == 0 {
		a.duplicate = true
		return nil
	}
	for k, i := range todo {
		t := first
		if k > 0 {
			if t, err = l.reserve(l.ctx, acct, len(batches[i])); err != nil {
				return err
			}
		}
		if l.ctx.Err() != nil {
			l.release(t, a.log)
			return errStopping // batches sent so far are marked
		}
		// A message fetched ahead waits here, prepared, for a session.
		if err := a.slot.acquire(a.probe, gen); err != nil {
			l.release(t, a.log)
			return err
		}
		if age := l.e.clock.Now().Sub(t.At()); k == 0 && age > staleReservation {
			// It waited long (slow transactions ahead of it): a
			// reservation that old is about to leave the minute window
			// the pacer checks others against. Within the minute it is
			// counted in every window that holds now, so it moves to
			// now; past it, it is made again.
			if age < time.Minute {
				if t, err = l.e.pacer.Restamp(l.e.sendCtx, t); err != nil {
					l.release(t, a.log) // t as it was
					return err
				}
			} else {
				l.release(t, a.log)
				if t, err = l.reserve(l.ctx, acct, len(batches[i])); err != nil {
					return err
				}
			}
		}
		if err := l.transaction(a, r, i, len(batches), batches[i], t); err != nil {
			return err
		}
	}
	return nil
}

// checkSize holds a message to its account's size limit. Producers check
// it before queuing (the limits service tells them the limit); a message
// queued past that check (a plain nats pub, a producer that found no
// relay to ask) and over the limit can never be sent as it is: a dead
// letter that says so. The limit counts what the producer counts
// (message.CountedSize), measured only when the message as sent is over.
func checkSize(m *message.Message, r *message.Rendered, acct account.Account) error {
	limit := acct.SizeLimit()
	if r.Size() <= limit {
		return nil
	}
	n, err := message.CountedSize(m)
	if err != nil || n <= limit {
		return err
	}
	tl := &body.TooLarge{Size: n, Limit: limit, Account: acct.Alias}
	return &message.Invalid{Field: "size", Reason: tl.Error() + " (max_message_bytes)"}
}

// lookupAndReserve checks the idempotency markers of every batch and
// reserves the pacing of the first batch not yet sent. On a first
// delivery the two are independent round trips (a KV read, a KV write),
// so they go side by side: the reservation is made for batch 0, which is
// the first unsent one for every such message (a redelivery, replay or
// requeue looks first, then reserves). If the
// markers say batch 0 was sent, the reservation is cancelled or given
// back and the first unsent batch reserves on its own. The markers are
// still read before any batch is sent, and a reservation still precedes
// every transaction. It returns the unsent batches and the first one's
// reservation (zero when there is nothing to send).
func (l *lane) lookupAndReserve(a *attempt, acct account.Account, r *message.Rendered) ([][]string, []int, pacing.Ticket, error) {
	type reservation struct {
		t   pacing.Ticket
		err error
	}
	batches := r.Batches(l.batchSize(acct))
	if len(batches) == 0 { // Validate refuses it; nothing is acked unsent
		return nil, nil, pacing.Ticket{}, &message.Invalid{Field: "to", Reason: "no recipients"}
	}
	if a.meta.NumDelivered > 1 || a.msg.Headers().Get(queue.HdrMessageID) != "" {
		// A redelivery, replay or requeue may well be sent already: a
		// reservation for it, even given back a moment later, could make
		// another message see the budget spent and pause the account.
		// Look first, then reserve.
		batches, todo, err := l.unsent(a, acct, r, batches)
		if err != nil || len(todo) == 0 {
			return batches, todo, pacing.Ticket{}, err
		}
		t, err := l.reserve(l.ctx, acct, len(batches[todo[0]]))
		return batches, todo, t, err
	}
	rctx, cancel := context.WithCancel(l.ctx)
	defer cancel()
	reserved := make(chan reservation, 1)
	first := len(batches[0])
	go func() {
		t, err := l.reserve(rctx, acct, first)
		reserved <- reservation{t, err}
	}()
	batches, todo, err := l.unsent(a, acct, r, batches)
	useFirst := err == nil && len(todo) > 0 && todo[0] == 0 && len(batches[0]) == first
	if !useFirst {
		cancel() // a pacing wait need not run out
	}
	res := <-reserved
	if useFirst {
		return batches, todo, res.t, res.err
	}
	if res.err == nil {
		l.release(res.t, a.log)
	}
	if err != nil || len(todo) == 0 {
		return batches, todo, pacing.Ticket{}, err
	}
	t, err := l.reserve(l.ctx, acct, len(batches[todo[0]]))
	return batches, todo, t, err
}

// unsent returns the message's batches and those of them not yet sent
// (SentMarkers.Unsent). A message partly sent with another split (the
// account's per_day, or the recipient limit the server answered with,
// changed since) keeps that split, so that no recipient gets it twice. If
// per_day fell below that split's batch size, the rest can never fit a
// day's budget (the pacer would answer a whole day's wait again and
// again); if the server's recipient limit did, it would refuse the rest
// again and again: the message is dead-lettered, saying what to raise; a
// replay after that sends only the batches not yet sent.
func (l *lane) unsent(a *attempt, acct account.Account, r *message.Rendered, batches [][]string) ([][]string, []int, error) {
	todo, marked, resplit, err := l.e.sent.unsent(l.e.sendCtx, l.alias, a.markID, batches)
	if err != nil || resplit == 0 {
		a.marked = marked
		return batches, todo, err
	}
	if acct.PerDay > 0 && resplit > acct.PerDay {
		return batches, nil, &message.Invalid{Field: "to", Reason: fmt.Sprintf(
			"partly sent in batches of %d recipients, more than the account's per_day of %d: the rest can never fit a day's budget; raise per_day to at least %d (authtool login --per-day) and replay it",
			resplit, acct.PerDay, resplit)}
	}
	if lim := int(l.rcptLimit.Load()); lim > 0 && resplit > lim {
		return batches, nil, &message.Invalid{Field: "to", Reason: fmt.Sprintf(
			"partly sent in batches of %d recipients, and the server now takes only %d in one message (452 4.5.3): the rest can never go as that split; raise the tenant's recipient limit to at least %d and replay it",
			resplit, lim, resplit)}
	}
	a.log.Info().Int("batch_rcpts", resplit).Int("now_rcpts", len(batches[0])).
		Msg("partly sent with another batch size (per_day or the server's recipient limit changed since): the rest goes as that split")
	batches = r.Batches(resplit)
	todo, a.marked, resplit, err = l.e.sent.unsent(l.e.sendCtx, l.alias, a.markID, batches)
	if err == nil && resplit != 0 {
		err = fmt.Errorf("idempotency markers of message %s disagree about its split", a.id)
	}
	return batches, todo, err
}

// transaction sends one recipient batch, its pacing reserved (t):
// session, MAIL/RCPT/DATA, then the idempotency marker right after the
// 250.
func (l *lane) transaction(a *attempt, r *message.Rendered, batch, batches int, rcpts []string, t pacing.Ticket) error {
	ctx := l.e.sendCtx
	stopKeeping := l.keepCounting(t, a.log)
	tried, settled, refused, err := l.send(ctx, a.log, r.MailFrom, rcpts, l.content(r))
	t = stopKeeping()
	defer settled()
	var ce *smtpclient.ContentError
	if !tried || errors.As(err, &ce) {
		// Nothing sent, or the content could not be read: the server
		// discarded the transaction (smtpclient), Office 365 counted
		// nothing. What the read error means decides (classify): a body
		// gone or changed is Invalid, a store that did not answer is
		// temporary.
		l.release(t, a.log)
		return err
	}
	if err == nil && batch == batches-1 {
		// The last batch is accepted and its session is back in the pool:
		// the slot may carry the next message while the bookkeeping below
		// (marker, pacing, ack) is written. Sessions in use stay within
		// the account's MaxConns.
		a.slot.release()
	}
	if err != nil {
		var se *submit.SMTPError
		if errors.As(err, &se) {
			l.e.metrics.reply(l.alias, se.Code, se.Class)
			if se.Code != 0 || se.Stage != "message" {
				// A refusal, or a failure before the content left:
				// Office 365 did not count it.
				l.release(t, a.log)
				if lim := se.RecipientLimit(); lim > 0 {
					l.learnRcptLimit(lim, a.log)
					if l.batchSize(l.account()) < len(rcpts) {
						return fmt.Errorf("%w: %w", errRecipientLimit, err)
					}
				}
				return err
			}
		}
		// No reply to the content: Office 365 may have counted it, as
		// late as now. The reservation stays and moves to now, as after
		// a 250: left where it was reserved, it could stop counting
		// before Office 365's count does when the transaction outlasted
		// the second it was reserved in.
		if cerr := l.e.pacer.Confirm(ctx, t); cerr != nil {
			a.log.Warn().Err(cerr).Msg("pacing reservation of a lost transaction not moved; it counts from its reservation")
		}
		return err
	}
	// The pacing confirmation goes beside the marker, not after it: the
	// two writes are independent, so the message waits for one round trip
	// (and one fsync) instead of two.
	confirmed := make(chan error, 1)
	go func() { confirmed <- l.e.pacer.Confirm(ctx, t) }()
	// Recipients refused at RCPT while the others took the message
	// (RFC 5321 §3.3): the marker keeps their positions, finish their
	// dead letter.
	var positions, later []int
	if len(refused) > 0 {
		at := make(map[string]int, len(rcpts))
		for i, rc := range rcpts {
			at[rc] = i
		}
		for _, rf := range refused {
			l.e.metrics.reply(l.alias, rf.Err.Code, rf.Err.Class)
			i, ok := at[rf.Rcpt]
			if rf.Err.Temporary() {
				a.deferred.add(batch, refusal{rcpt: rf.Rcpt, reply: rf.Err.Reply()})
				if ok {
					later = append(later, i)
				}
				continue
			}
			a.refused.add(batch, refusal{rcpt: rf.Rcpt, reply: rf.Err.Reply()})
			if ok {
				positions = append(positions, i)
			}
		}
		a.log.Warn().Int("refused", len(refused)).Int("for_now", len(later)).Int("recipients", len(rcpts)).Str("reply", refused[0].Err.Reply()).
			Msg("recipients refused at RCPT; sent to the others; those refused for good are dead-lettered, a copy is queued for those refused for now")
	}
	// The crash window: between the 250 above and this write, a crash
	// means a redelivery sends the batch again (package documentation).
	at := l.e.clock.Now()
	if err := markBatch(ctx, a.log, func(ctx context.Context) error {
		return l.e.sent.mark(ctx, l.alias, a.markID, batch, batches, len(rcpts), at, positions, later)
	}); err != nil {
		a.log.Error().Err(err).Msg("sent, but the idempotency marker was not written: a redelivery would send it again")
	}
	settled() // the session's next transaction may end now
	if err := <-confirmed; err != nil {
		a.log.Warn().Err(err).Msg("pacing confirmation not written; the reservation counts instead")
	}
	l.e.metrics.reply(l.alias, 250, "sent")
	if batches > 1 {
		a.log.Info().Int("batch", batch+1).Int("batches", batches).Int("recipients", len(rcpts)).Msg("batch accepted")
	}
	return nil
}

// staleReservation is the age at which a prepared message's reservation is
// made again before its transaction: well inside the minute window.
const staleReservation = 30 * time.Second

// keepCounting moves t to now every staleReservation while its
// transaction runs, and the returned function stops that and returns t as
// last moved. Office 365 counts a message at its acceptance, and the end
// of DATA may come minutes after the reservation (a slow upload; the
// relay waits DataTimeout, 5 minutes, for the reply): a reservation left
// where it was made would leave the minute window while the transaction
// is still under way, the next message would take its place, and Office
// 365 would then count both in one minute and refuse one (554 5.2.0).
// Moved while under a minute old, it keeps every limit (Pacer.Restamp).
// A move that cannot be written leaves t as it was and is tried again.
func (l *lane) keepCounting(t pacing.Ticket, log zerolog.Logger) func() pacing.Ticket {
	stop := make(chan struct{})
	last := make(chan pacing.Ticket, 1)
	go func() {
		for {
			timer := l.e.clock.NewTimer(staleReservation)
			select {
			case <-stop:
				timer.Stop()
				last <- t
				return
			case <-timer.C():
			}
			moved, err := l.e.pacer.Restamp(l.e.sendCtx, t)
			if err != nil {
				log.Warn().Err(err).Msg("pacing reservation of a long transaction not moved; trying again")
				continue
			}
			t = moved
		}
	}()
	return func() pacing.Ticket {
		close(stop)
		return <-last
	}
}

// reserve waits for the pacer (holding the message, heartbeats running)
// when the wait is short; a longer one pauses the account instead.
// The time waited (on the engine's clock) is relay_pacing_wait_seconds.
func (l *lane) reserve(ctx context.Context, acct account.Account, rcpts int) (pacing.Ticket, error) {
	var waited time.Duration
	for {
		// The write runs on the engine's send context, not ctx nor the
		// lane's: a caller that no longer wants the reservation, or a
		// lane that stops, must still learn whether it was written, to
		// give it back (a write cut short could land unknown, and count
		// against the day's budget for a day); ctx ends only the waits.
		t, wait, err := l.e.pacer.Reserve(l.e.sendCtx, acct.Mailbox, rcpts, limits(acct))
		switch {
		case err == nil && wait == 0 && l.ctx.Err() != nil:
			l.release(t, l.log)
			return pacing.Ticket{}, errStopping
		case err == nil && wait == 0:
			l.e.metrics.pacingWait.WithLabelValues(l.alias).Observe(waited.Seconds())
			return t, nil
		case l.ctx.Err() != nil:
			return pacing.Ticket{}, errStopping
		case err != nil:
			return pacing.Ticket{}, err
		case wait > maxHold:
			return pacing.Ticket{}, &PaceError{Wait: wait, Reason: fmt.Sprintf("%d recipients do not fit the mailbox's remaining daily budget", rcpts)}
		}
		if !sleepOn(ctx, l.e.clock, wait, nil) {
			return pacing.Ticket{}, errStopping
		}
		waited += wait
	}
}

func (l *lane) release(t pacing.Ticket, log zerolog.Logger) {
	if err := l.e.pacer.Release(l.e.sendCtx, t); err != nil {
		log.Warn().Err(err).Msg("pacing reservation not given back; it counts until it ages out")
	}
}

// send runs one transaction on a pooled session and puts the session back;
// tried is false when no session could be had (nothing was sent). A reused
// session found dead before the server took any of the transaction (closed
// while idle, or 421 as Office 365 closes idle sessions) costs no retry
// delay: the transaction runs again on the next session. Each such failure
// discards a pooled session, and a new session is not "reused", so this
// ends after at most the pool's idle sessions and one fresh one.
//
// settled must be called once the transaction's idempotency marker is
// written (or its write failed, or nothing was accepted): the session's
// next transaction holds its final "." until then (holdEnd), so a crash
// finds at most one accepted message per session without its marker.
// That is the duplicate window of the package documentation.
//
// refused are the recipients the server refused at RCPT for reasons of
// their own while it took the others (submit.Session.SendSome): with a
// nil err the message went to all the others.
//
// A transaction the session itself failed, with the server's word that
// nothing was taken, also runs once more at once on another connection,
// once per transaction (retriedSession): a 530 to MAIL, RCPT or DATA
// (5.7.57 "client not authenticated", RFC 4954 §6: the session's
// authentication, not the message), or a 421 to any of them or to the
// end of the content (the server closes the connection and has not
// accepted the message, RFC 5321 §3.8, §4.2.3). A second such failure
// takes the retry schedule as before, so a server answering every
// session so costs at most one more transaction per message.
func (l *lane) send(ctx context.Context, log zerolog.Logger, from string, rcpts []string, content smtpclient.Content) (tried bool, settled func(), refused []submit.RcptRefusal, err error) {
	retried := false
	for {
		s, err := l.session(ctx, log)
		if err != nil {
			return false, func() {}, nil, err // a failure before, if any, sent nothing either
		}
		done := make(chan struct{})
		prev := s.Follow(done)
		refused, err = s.SendSome(ctx, from, rcpts, holdEnd(ctx, content, prev))
		again := s.NotStarted(err)
		l.pool.Put(s)
		var se *submit.SMTPError
		switch {
		case again:
			log.Debug().Err(err).Msg("pooled session failed before the message left; sending on the next one")
		case !retried && errors.As(err, &se) && retriedSession(se):
			retried = true
			log.Info().Int("smtp_code", se.Code).Str("reply", se.Reply()).Msg("the server ended the session without taking the message; sending once more at once on another connection")
		default:
			return true, sync.OnceFunc(func() { close(done) }), refused, err
		}
		close(done)
		if errors.As(err, &se) {
			l.e.metrics.reply(l.alias, se.Code, se.Class)
		}
	}
}

// retriedSession says whether a failed transaction goes once more at
// once on another connection (lane.send): a reply, after AUTH, that is
// about the session and says nothing was accepted. The session that got
// it is not reused (submit: a 421 and class session discard it).
func retriedSession(se *submit.SMTPError) bool {
	switch se.Stage {
	case "mail", "rcpt", "data":
		return se.Code == 421 && se.Class != submit.ClassConfig || se.Class == submit.ClassSession
	case "message":
		// A reply to the end of the content: 421 refuses it (no 250);
		// no reply at all leaves it unknown, and is not retried here.
		return se.Code == 421 && se.Class != submit.ClassConfig
	}
	return false
}

// holdEnd returns content whose reader, at its end, waits for prev (the
// session's previous transaction settled) before reporting it: the
// client's final "." (RFC 5321 §4.1.1.4), and so Office 365's 250, come
// only after the previous message's marker is written. Everything before
// the end still overlaps with that write. A context ending while it waits
// is a read error: the client closes without the ".", and the server
// discards the transaction (RFC 5321 §3.8).
func holdEnd(ctx context.Context, content smtpclient.Content, prev <-chan struct{}) smtpclient.Content {
	if prev == nil {
		return content
	}
	open := content.Open
	content.Open = func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		return &endHold{ReadCloser: rc, ctx: ctx, prev: prev}, nil
	}
	return content
}

type endHold struct {
	io.ReadCloser
	ctx  context.Context
	prev <-chan struct{}
}

func (h *endHold) Read(p []byte) (int, error) {
	n, err := h.ReadCloser.Read(p)
	if err == io.EOF && h.prev != nil {
		select {
		case <-h.prev:
			h.prev = nil
		case <-h.ctx.Done():
			return n, fmt.Errorf("waiting for the previous message's marker: %w", h.ctx.Err())
		}
	}
	return n, err
}

// session takes a pooled session for the current access token. 535 5.7.3
// means the token was refused: one forced refresh and one more try
// (docs/office365.md §4); a second refusal is returned as it is (class auth:
// the account pauses).
func (l *lane) session(ctx context.Context, log zerolog.Logger) (*submit.Session, error) {
	tok, err := l.e.tokens.Token(ctx, l.alias)
	if err != nil {
		return nil, err
	}
	s, err := l.sessionFor(ctx, log, tok)
	var se *submit.SMTPError
	if errors.As(err, &se) && se.Class == submit.ClassAuth {
		l.e.metrics.reply(l.alias, se.Code, se.Class)
		log.Warn().Int("smtp_code", se.Code).Str("reply", se.Reply()).Msg("authentication refused; refreshing the token once")
		if tok, err = l.e.tokens.ForceRefresh(ctx, l.alias); err != nil {
			return nil, err
		}
		s, err = l.sessionFor(ctx, log, tok)
		if errors.As(err, &se) && se.Class == submit.ClassAuth {
			// A token fresh from the identity platform, refused too:
			// no refresh will help, a person must (the user, the app's
			// permission, the consent). The token service raises the
			// alarm it raises for a refresh refused for want of
			// consent; the account pauses either way.
			if marked, rerr := l.e.tokens.SMTPRefused(l.e.sendCtx, l.alias, tok); rerr != nil {
				log.Warn().Err(rerr).Msg("the token service was not told of the refused token; the account pauses all the same")
			} else {
				// Marked by us, or already by another relay for the
				// same token: either way this lane's next session
				// that authenticates ends the alarm.
				issued := tok.Issued
				l.smtpRefused.Store(&issued)
				if marked {
					log.Error().Int("smtp_code", se.Code).Str("reply", se.Reply()).
						Msg("a freshly refreshed token was refused too: the account needs consent (relay.events.account.consent_required)")
				}
			}
		}
	}
	if err == nil {
		since := l.smtpRefused.Swap(nil)
		if since == nil && l.authenticated.CompareAndSwap(false, true) {
			// The lane's first session: the relay that reported this
			// token refused may be gone (restarted, another replica),
			// and none would end the alarm on a healthy account.
			issued := tok.Issued
			since = &issued
		}
		if since != nil {
			// A session authenticated after the refusal reported:
			// the alarm ends.
			if _, cerr := l.e.tokens.SMTPAccepted(l.e.sendCtx, l.alias, *since); cerr != nil {
				l.smtpRefused.CompareAndSwap(nil, since) // told at the next session
				log.Warn().Err(cerr).Msg("the token service was not told that the SMTP server takes the tokens again")
			}
		}
	}
	if errors.As(err, &se) { // connect, STARTTLS or AUTH failed
		l.e.metrics.reply(l.alias, se.Code, se.Class)
	}
	if errors.Is(err, submit.ErrPoolClosed) {
		return nil, errStopping
	}
	return s, err
}

// sessionFor takes a pooled session for tok, if the account record the
// lane has agrees with the binding sealed with the token (its SMTP
// endpoint, CA file and client id): a rewritten record gets no connection
// and no token, only a *token.BindingError (class config: the account
// pauses), an error log line and relay_account_binding_mismatch_total.
// The session is asked for at the bound endpoint only, so an account
// change between the check and the dial cannot redirect the token either.
//
// A consent that binds new values writes the token record, then the
// account record, and a worker may hold a token cached before it: so a
// difference is confirmed only after asking the token service again
// (Reload) and, if it persists, after waiting up to bindingSettle for the
// account record to change.
func (l *lane) sessionFor(ctx context.Context, log zerolog.Logger, tok token.AccessToken) (*submit.Session, error) {
	reload, waited := true, false
	for range 8 {
		if !tok.Binding.Bound() {
			l.unbound.Do(func() {
				l.log.Warn().Msg("the token service sent a token without a binding (an earlier version): the account record is not checked against it; upgrade the token services")
			})
			return l.pool.Get(ctx, tok.Token)
		}
		acct, rebound := l.accountRebound()
		err := tok.Binding.Check(acct)
		switch {
		case err == nil:
			s, err := l.pool.GetFor(ctx, tok.Token, submit.Endpoint{Addr: tok.Binding.SMTPAddr, CAFile: tok.Binding.CAFile})
			if !errors.Is(err, submit.ErrEndpointChanged) {
				return s, err
			}
			continue // the account changed between the check and the pool: check again
		case reload:
			reload = false
			if tok, err = l.e.tokens.Reload(ctx, l.alias); err != nil {
				return nil, err
			}
			continue
		case !waited:
			waited = true
			log.Debug().Err(err).Msg("account record disagrees with its token binding; waiting briefly for an account write to follow")
			if !sleepOn(ctx, wall, bindingSettle, rebound) {
				return nil, ctx.Err()
			}
			select {
			case <-rebound:
				reload = true
				continue
			default:
			}
		}
		l.e.metrics.bindingMismatch(l.alias)
		ev := log.Error().Err(err)
		var be *token.BindingError
		if errors.As(err, &be) {
			ev = ev.Str("fields", be.FieldNames())
		}
		ev.Msg("account record disagrees with the binding sealed with its tokens: no SMTP session opened, no token sent")
		return nil, err
	}
	return nil, errAccountChanged
}

// bindingSettle is how long a session waits, after a binding mismatch
// that asking the token service again did not clear, for the account
// record to change: consent writes it right after the token record.
const bindingSettle = 2 * time.Second

// finish acts on the attempt's result: ack, retry, pause, dead-letter.
func (l *lane) finish(a *attempt, err error) {
	ctx := l.e.sendCtx
	seq := a.meta.Sequence.Stream
	// Outcomes are counted before the stream is told, so whoever sees the
	// message leave the stream also sees it counted.
	if err == nil && (len(a.refused) > 0 || len(a.deferred) > 0) {
		dlErr := l.deadLetterRefused(a)
		if dlErr == nil {
			dlErr = l.queueDeferred(a)
		}
		if dlErr != nil {
			// Sent to the others and marked: the redelivery sends
			// nothing again and, from the markers, dead-letters these.
			l.failed(seq, fmt.Sprintf("recipients refused at RCPT; their dead letter or copy was refused: %v", dlErr))
			delay := l.e.cfg.Retry.Delay(int(a.meta.NumDelivered))
			if !a.duplicate {
				// This attempt sent it to the accepted recipients;
				// the redelivery that stores the rest is a duplicate.
				l.e.metrics.outcome(l.alias, outcomeSent)
			}
			l.e.metrics.outcome(l.alias, outcomeRetried)
			a.nak(delay)
			a.log.Warn().AnErr("dlq", dlErr).Dur("retry_in_ms", delay).
				Msg("sent to the accepted recipients, but the dead letter or the copy for the refused ones was not stored; the message stays queued for it")
			l.sent(a.started, a.probe)
			return
		}
	}
	if err == nil {
		if a.duplicate {
			l.e.metrics.outcome(l.alias, outcomeDuplicate)
			a.log.Info().Msg("already sent (idempotency marker): acked without sending")
		} else {
			l.e.metrics.outcome(l.alias, outcomeSent)
			a.log.Info().Int("smtp_code", 250).Msg("sent")
		}
		if ackErr := a.msg.DoubleAck(ctx); ackErr != nil {
			// The marker is written, so a redelivery is acked as duplicate.
			// The body stays for it (the sweeper takes it after).
			a.log.Warn().Err(ackErr).Msg("sent, but the ack failed; a redelivery will be recognised as sent")
		} else if len(a.refused) == 0 && len(a.deferred) == 0 {
			// (The dead letter or copy for refused recipients names
			// the body too: it stays for that.)
			l.deleteBody(a.body, a.markID != a.id, a.log)
		}
		l.forget(seq)
		l.sent(a.started, a.probe)
		l.recoverThrottle()
		return
	}
	if errors.Is(err, errStopping) {
		a.nak(0) // not started: straight back for the next worker
		return
	}
	last := a.meta.NumDelivered >= uint64(l.e.cfg.MaxDeliver)
	if errors.Is(err, errSameID) {
		// Not tried: back after a retry delay, by when the copy being
		// sent has written its marker (or failed). Each time costs a
		// delivery, and the other copy's transaction may outlast them
		// all (a slow server, a long pacing wait): at its last delivery
		// a nak would leave it to be dead-lettered, or given up
		// unsent, for no failure of its own. It is requeued as a fresh
		// message then, as a paused account's message is.
		if last {
			l.keepQueued(a, a.log.Info().Err(err), true, 0)
		} else {
			delay := l.e.cfg.Retry.Delay(1)
			a.nak(delay)
			a.log.Info().Err(err).Dur("retry_in_ms", delay).Msg("message goes back to the stream until the other copy's outcome is known")
		}
		if a.probe {
			l.probeDone() // the next message probes
		}
		return
	}
	switch {
	case errors.Is(err, errPausedAhead):
		l.keepQueued(a, a.log.Info().Err(err), last, l.e.cfg.Retry.Delay(1))
		return
	case errors.Is(err, errAccountChanged), errors.Is(err, errRecipientLimit):
		l.keepQueued(a, a.log.Info().Err(err), last, 0)
		if a.probe {
			l.probeDone() // the next message probes
		}
		return
	}
	class, se := classify(err)
	action := ActionFor(class)
	reply := ""
	ev := a.log.Warn().Err(err).Str("class", string(class))
	if se != nil {
		reply = se.Reply()
		ev = ev.Int("smtp_code", se.Code)
	}
	if action != ActionDeadLetter {
		// Kept queued: if it expires, its dead letter says why it waited.
		why := reply
		if why == "" {
			why = err.Error()
		}
		l.failed(a.meta.Sequence.Stream, why)
	}
	switch action {
	case ActionPause:
		var pe *PaceError
		if errors.As(err, &pe) && !a.probe && l.othersInFlight() {
			// The day's budget ran out under this message while others
			// of the lane hold reservations: they go first, the lane
			// fetches nothing more, and it pauses when they are done.
			l.holdForDay(pe.Wait)
			l.keepQueued(a, ev, last, l.e.cfg.Retry.Delay(1))
			return
		}
		hint := pauseHint(err)
		if class == submit.ClassQuota && se != nil && (se.DayQuota() || a.probe) {
			// The day's recipient limit (a 5.1.90, or a quota reply
			// to a probe: a minute's rate would have cleared before
			// it): the probe waits until the day's window has room.
			hint = l.quotaWait()
		}
		l.pause(class, err, hint, a.probe)
		if class == submit.ClassTenant {
			l.e.pauseTenant(l.account(), class, err)
		}
		l.keepQueued(a, ev, last, l.e.cfg.Retry.Delay(1))
		return
	case ActionRetry:
		if class == submit.ClassThrottle {
			l.throttle()
		}
		if se != nil && (se.Stage == "dial" || se.Stage == "tls" || se.Stage == "auth") {
			l.sessionRefused(err)
		}
		if !last {
			delay := l.e.cfg.Retry.Delay(int(a.meta.NumDelivered))
			l.e.metrics.outcome(l.alias, outcomeRetried)
			a.nak(delay)
			ev.Dur("retry_in_ms", delay).Msg("temporary failure; will retry")
			if a.probe {
				l.probeDone()
			}
			return
		}
		err = fmt.Errorf("gave up after %d attempts: %w", a.meta.NumDelivered, err)
	}
	why := err.Error()
	if se != nil && se.SendAsDenied() {
		// The one message-class refusal a person can fix for the
		// account's later mail too: the reason says how (submit.Remedy).
		why += "; remedy: " + submit.Remedy(se, l.account().Mailbox)
	}
	dl := queue.DeadLetter{Reason: why, Class: string(class), LastReply: reply}
	if dlErr := l.deadLetter(a, dl, outcomeDeadLettered); dlErr != nil {
		l.failed(seq, fmt.Sprintf("%v (its dead letter was refused: %v)", err, dlErr))
		ev.AnErr("dlq", dlErr).Msg("dead-lettering failed; the message stays queued")
		a.nak(l.e.cfg.Retry.Delay(int(a.meta.NumDelivered)))
		return
	}
	ev.Msg("dead-lettered")
}

// deadLetter moves a's message to MAIL_DLQ with dl's reason, class and
// last reply (queue.MoveToDLQ: copy, PubAck, then the original
// terminated) and counts outcome. A probe is done either way; a copy
// MAIL_DLQ refused is the caller's to log and nak, so that the next
// delivery tries again.
func (l *lane) deadLetter(a *attempt, dl queue.DeadLetter, outcome string) error {
	dl.ID, dl.Account, dl.First = a.id, l.alias, a.first
	err := queue.MoveToDLQ(l.e.sendCtx, l.e.js, a.msg, dl)
	if a.probe {
		l.probeDone()
	}
	if err != nil {
		return err
	}
	l.forget(a.meta.Sequence.Stream)
	l.e.metrics.outcome(l.alias, outcome)
	return nil
}

// maxLoggedRefusals is how many refused recipients, each with its reply
// (up to submit.MaxReplyText), the log line of their dead letter names;
// the rest are counted. One dead letter holds as many recipients as fit
// a header (queue.RecipientParts), and all their replies made a log line
// of tens of kilobytes; the dead letter itself names every one.
const maxLoggedRefusals = 3

// deadLetterRefused stores the dead letters of a's refused recipients
// (queue.CopyToDLQ, the original left for the ack): a copy of the message
// for those recipients only (queue.HdrRecipients), so that `relay dlq
// replay` sends it to them and not again to the others, with a reason
// that names each refused address and its reply. Recipients that do not
// fit one header go in several copies (queue.RecipientParts).
func (l *lane) deadLetterRefused(a *attempt) error {
	refused := a.refused.inOrder()
	replies := make(map[string]string, len(refused))
	var rcpts []string
	for _, r := range refused {
		rcpts = append(rcpts, r.rcpt)
		replies[r.rcpt] = r.reply
	}
	for part, group := range queue.RecipientParts(rcpts) {
		var why, logged, last strings.Builder
		fmt.Fprintf(&why, "%d of the message's recipients refused at RCPT (it went to the others): ", len(group))
		for i, rc := range group {
			if i > 0 {
				why.WriteString("; ")
			}
			reply := replies[rc]
			if reply == "" {
				reply = "refused at an earlier attempt (its reply is not kept)"
			} else if last.Len() == 0 {
				last.WriteString(reply)
			}
			fmt.Fprintf(&why, "%s: %s", rc, reply)
			if i == maxLoggedRefusals-1 {
				logged.WriteString(why.String())
			}
		}
		if logged.Len() == 0 {
			logged.WriteString(why.String())
		} else if more := len(group) - maxLoggedRefusals; more > 0 {
			fmt.Fprintf(&logged, "; and %d more (the dead letter names them all)", more)
		}
		dl := queue.DeadLetter{ID: a.id, Account: l.alias, First: a.first, Reason: why.String(),
			Class: string(submit.ClassMessage), LastReply: last.String(), Recipients: group, Part: part}
		res, err := queue.CopyToDLQ(l.e.sendCtx, l.e.js, a.msg, dl)
		if err != nil {
			return err
		}
		if !res.Duplicate {
			// Stored at an earlier attempt (a redelivery after a
			// crash or a refused copy): counted then.
			l.e.metrics.outcome(l.alias, outcomeDeadLettered)
		}
		a.log.Warn().Int("recipients", len(group)).Str("reason", logged.String()).Bool("duplicate", res.Duplicate).Msg("refused recipients dead-lettered")
	}
	return nil
}

// queueDeferred queues, before the ack, a copy of a's message for the
// recipients refused for now (a 4xx about them alone) while the others
// took it: Relay-Recipients names them (queue.RequeueRecipients), so the
// copy goes to them only and keys its markers by the id and a digest of
// them (recipientsID): not a duplicate of the original, and never sent
// again to the recipients that have it. Its Nats-Msg-Id is that key, so
// a redelivery of the original that queues it again (a crash or a
// refused publish before the ack; the positions are in the marker) is
// deduplicated. The copy keeps the original's queue time: the queue
// lifetime bounds all of its retries. A copy whose recipients are all
// refused for now again is retried on the schedule like any message.
func (l *lane) queueDeferred(a *attempt) error {
	deferred := a.deferred.inOrder()
	var rcpts []string
	for _, r := range deferred {
		rcpts = append(rcpts, r.rcpt)
	}
	for _, group := range queue.RecipientParts(rcpts) {
		res, err := queue.RequeueRecipients(l.e.sendCtx, l.e.js, a.msg, a.id, recipientsID(a.id, group), group)
		if err != nil {
			return err
		}
		if !res.Duplicate {
			l.e.metrics.outcome(l.alias, outcomeDeferred)
		}
		a.log.Info().Int("recipients", len(group)).Str("reply", deferred[0].reply).Bool("duplicate", res.Duplicate).
			Msg("recipients refused for now: a copy for them is queued")
	}
	return nil
}

// expire gives up a message older than the queue lifetime: a copy in
// MAIL_DLQ with reason "expired after <lifetime> undelivered" and the last
// failure this process saw, then the original terminated. (JetStream's
// MaxAge would drop it unseen a margin later.)
func (l *lane) expire(a *attempt, queued time.Time) {
	reason, last := l.e.expiryReason(l.lastFailure(a.meta.Sequence.Stream), l.pauseReply())
	if err := l.deadLetter(a, queue.DeadLetter{Reason: reason, Class: classExpired, LastReply: last}, outcomeExpired); err != nil {
		a.log.Error().Err(err).Msg("expired, but dead-lettering failed; the message stays queued")
		// On the retry schedule by deliveries, as any refused dead
		// letter: at its first step every time, expired mail behind a
		// full MAIL_DLQ cycled through the lane at a fixed pace.
		a.nak(l.e.cfg.Retry.Delay(int(a.meta.NumDelivered)))
		return
	}
	a.log.Warn().Time("queued", queued).Str("reason", reason).Msg("expired: dead-lettered undelivered")
}

// giveUp dead-letters, without trying it, a message delivered twice
// --max-deliver times. Deliveries past the last one are expected only
// when the last could not end it (its dead letter or requeue refused:
// each is tried again at the next delivery); this many means they keep
// ending without an outcome, as when the message stops the worker every
// time it is tried. The server sets no delivery limit
// (queue.ServerMaxDeliver), so this is what bounds them.
func (l *lane) giveUp(a *attempt) {
	why := l.lastFailure(a.meta.Sequence.Stream)
	if why == "" {
		why = "its deliveries ended without an outcome (the worker stopped while trying it?)"
	}
	reason := fmt.Sprintf("gave up after %d deliveries (twice --max-deliver): %s", a.meta.NumDelivered, why)
	if err := l.deadLetter(a, queue.DeadLetter{Reason: reason, Class: string(submit.ClassTransient)}, outcomeDeadLettered); err != nil {
		a.log.Error().Err(err).Msg("giving up, but dead-lettering failed; the message stays queued")
		a.nak(l.e.cfg.Retry.Delay(int(a.meta.NumDelivered)))
		return
	}
	a.log.Warn().Str("reason", reason).Msg("dead-lettered")
}

// keepQueued gives back a message its account cannot send now: retried
// after delay (a pause; counted as outcome "paused"), or at once (delay 0:
// the account changed under it) or, at its last delivery, requeued as a
// fresh message. Waiting for an account never dead-letters mail.
func (l *lane) keepQueued(a *attempt, ev *zerolog.Event, last bool, delay time.Duration) {
	if last {
		if _, rqErr := queue.Requeue(l.e.sendCtx, l.e.js, a.msg, a.id); rqErr != nil {
			// Delivered again after the delay (the server sets no
			// delivery limit), when the requeue is tried again.
			a.nak(l.e.cfg.Retry.Delay(int(a.meta.NumDelivered)))
			ev.AnErr("requeue", rqErr).Msg("not sendable now at the message's last delivery; requeue failed, it stays queued")
			return
		}
		l.forget(a.meta.Sequence.Stream)
		l.e.metrics.outcome(l.alias, outcomeRequeued)
		ev.Msg("not sendable now at the message's last delivery: requeued as a fresh message")
		return
	}
	if delay == 0 {
		a.nak(0)
		ev.Msg("message goes back to the stream, to be prepared again")
		return
	}
	l.e.metrics.outcome(l.alias, outcomePaused)
	a.nak(delay)
	ev.Dur("retry_in_ms", delay).Msg("account cannot send now; message kept queued")
}

// heartbeat tells JetStream the message is still being worked on, every
// interval, until the returned stop is called (docs/design.md §7).
func heartbeat(ctx context.Context, msg jetstream.Msg, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}
