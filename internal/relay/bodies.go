package relay

import (
	"bytes"
	"context"
	"io"
	"time"

	"github.com/rs/zerolog"

	"relay365/internal/crashpoint"
	"relay365/internal/message"
	"relay365/internal/smtpclient"
)

// Large messages: the content of a message with a BodyRef is in the body
// store (internal/body). The worker reads its header section to render
// (the raw rules: From policy, Bcc, Date, Message-ID), streams the rest
// into DATA for every transaction afresh, and deletes the body once the
// message is acked. A dead letter keeps it; an orphan (a crash between
// the ack and the delete, or a producer's between storing and publishing)
// is swept after BodyOrphanAge.

// renderStored renders a message whose content is in the body store.
func (l *lane) renderStored(m *message.Message, s message.Sender, dated time.Time) (*message.Rendered, error) {
	rc, err := l.e.bodies.Open(l.e.sendCtx, *m.Body)
	if err != nil {
		return nil, err
	}
	head, err := message.ReadHeaderSection(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	return message.RenderBody(m, s, dated, head)
}

// content is what DATA carries for r: its bytes, or its header section
// followed by the stored body past the stored header section, checked
// line by line (message.CheckBody) and against its digest as it streams.
func (l *lane) content(r *message.Rendered) smtpclient.Content {
	if r.Body == nil {
		return smtpclient.Bytes(r.Data)
	}
	ref, head, off := *r.Body, r.Data, r.BodyOffset
	return smtpclient.Content{
		Size:     r.Size(),
		EightBit: ref.EightBit || smtpclient.EightBit(head),
		Open: func() (io.ReadCloser, error) {
			rc, err := l.e.bodies.Open(l.e.sendCtx, ref)
			if err != nil {
				return nil, err
			}
			if _, err := io.CopyN(io.Discard, rc, off); err != nil {
				rc.Close()
				return nil, err
			}
			return struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(head), message.CheckBody(rc)), rc}, nil
		},
	}
}

// deleteBody removes an acked message's body; a failure leaves an orphan
// for the sweeper, never a lost message.
//
// shared says the message was a copy for some of its recipients only
// (queue.HdrRecipients): the dead letter of recipients refused for good
// at the same RCPT, or another such copy, may name the same body, so it
// is deleted only when no message in MAIL or MAIL_DLQ names it
// (body.Store.DeleteUnnamed: it reads both streams, which only these
// rare copies pay). A plain message's body is its own alone.
func (l *lane) deleteBody(ref *message.BodyRef, shared bool, log zerolog.Logger) {
	if ref == nil {
		return
	}
	// Acked, not yet deleted: a crash here leaves a body whose message is
	// gone (the sweeper's), and nothing to send again.
	crashpoint.Hit(crashpoint.WorkerAcked)
	var err error
	if shared {
		_, err = l.e.bodies.DeleteUnnamed(l.e.sendCtx, l.e.js, []string{ref.Object})
	} else {
		err = l.e.bodies.Delete(l.e.sendCtx, ref.Object)
	}
	if err != nil {
		log.Warn().Err(err).Str("object", ref.Object).Msg("sent, but its body was not deleted; the sweeper will")
	}
}

// bodySweepLoop deletes orphaned bodies every BodySweepEvery. Every
// replica sweeps: a body deleted twice is no error, and a sweep deletes
// only what no message names.
func (e *Engine) bodySweepLoop(ctx context.Context) {
	for sleepOn(ctx, e.clock, e.cfg.BodySweepEvery, nil) {
		n, err := e.bodies.Sweep(ctx, e.js, e.clock.Now().Add(-e.cfg.BodyOrphanAge))
		switch {
		case err != nil:
			e.log.Warn().Err(err).Msg("body sweep failed; it runs again later")
		case n > 0:
			e.log.Info().Int("deleted", n).Msg("orphaned bodies deleted")
		}
	}
}
