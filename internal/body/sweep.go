package body

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
)

// OrphanAge is how old an unnamed body must be before Sweep deletes it,
// by default: the dedupe window, inside which a producer may still be
// retrying the publish that names it. relay serve --body-orphan-age may
// set it no shorter than MAIL's duplicate window.
const OrphanAge = queue.DedupeWindow

// Sweep deletes the bodies stored before cutoff that no message in MAIL
// or MAIL_DLQ names, and returns how many it deleted. The streams are
// read DLQ, MAIL, DLQ: a message moving between them while it reads
// (dead-lettered: copied to MAIL_DLQ, then removed from MAIL; replayed:
// copied to MAIL, then removed from MAIL_DLQ) is seen in one of the
// three passes, since each copy is written before the original goes.
//
// It also deletes the chunks of a Put that never finished (unfinished):
// no object lists them, so the sweep of names above never sees them.
func (s *Store) Sweep(ctx context.Context, js jetstream.JetStream, cutoff time.Time) (int, error) {
	// The chunk subjects are read before the objects are listed, so a
	// Put that finishes in between is among the objects. One listing
	// serves both passes: an object DeleteUnnamed deletes has its chunks
	// purged with it (or DeleteUnnamed fails and the sweep ends there).
	chunks, err := s.chunkSubjects(ctx)
	if err != nil {
		return 0, err
	}
	list, err := s.list(ctx)
	if err != nil {
		return 0, err
	}
	deleted, err := s.DeleteUnnamed(ctx, js, namesBefore(list, cutoff))
	if err != nil {
		return deleted, err
	}
	n, err := s.deleteUnfinished(ctx, chunks, list, cutoff)
	return deleted + n, err
}

// chunkSubjects lists the subjects that hold chunks ("$O.<bucket>.C.<nuid>").
func (s *Store) chunkSubjects(ctx context.Context) ([]string, error) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(chunkSubject(">")))
	if err != nil {
		return nil, fmt.Errorf("sweep: list the chunks of %s: %w", Bucket, err)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		out = append(out, subj)
	}
	return out, nil
}

// deleteUnfinished purges those of chunks (subjects, as chunkSubjects
// lists them) that no object of list names and whose last chunk was
// stored before cutoff, and returns how many it purged. They are what a
// Put leaves when it stops between its chunks and its metadata and may
// not purge what it wrote: a producer (which may store a body, never
// purge one: internal/roles) whose context ended midway, or any process
// killed between two chunks. Without this they would stay for ever: no
// metadata, so Names never lists them, and no message can name them.
// The cutoff is the orphan age, as for named bodies: a Put still going
// on has a chunk younger than that, and one that finishes after the
// objects were read is spared by it too.
func (s *Store) deleteUnfinished(ctx context.Context, chunks []string, list []*jetstream.ObjectInfo, cutoff time.Time) (int, error) {
	named := make(map[string]bool, len(list))
	for _, info := range list {
		named[chunkSubject(info.NUID)] = true
	}
	purged := 0
	for _, subj := range chunks {
		if named[subj] {
			continue
		}
		last, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // purged meanwhile (a Delete)
		}
		if err != nil {
			return purged, fmt.Errorf("sweep: read %s: %w", subj, err)
		}
		if !last.Time.Before(cutoff) {
			continue
		}
		if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return purged, fmt.Errorf("sweep: purge the chunks on %s: %w", subj, err)
		}
		purged++
	}
	return purged, nil
}

// DeleteUnnamed deletes those of names that no message in MAIL or
// MAIL_DLQ names, read as Sweep reads them, and returns how many it
// deleted. relay dlq purge deletes its dead letters' bodies with it: a
// body is not only its dead letter's when a replay queued a copy that
// names it (a replay whose removal from MAIL_DLQ failed, or one racing
// the purge).
func (s *Store) DeleteUnnamed(ctx context.Context, js jetstream.JetStream, names []string) (int, error) {
	if len(names) == 0 {
		return 0, nil
	}
	orphans := make(map[string]bool, len(names))
	for _, n := range names {
		orphans[n] = true
	}
	for _, stream := range []string{queue.StreamDLQ, queue.StreamMail, queue.StreamDLQ} {
		if err := scan(ctx, js, stream, func(data []byte) { forNames(data, func(n string) { delete(orphans, n) }) }); err != nil {
			return 0, err // unsure what is named: delete nothing
		}
		if len(orphans) == 0 {
			return 0, nil
		}
	}
	deleted := 0
	for n := range orphans {
		if err := s.Delete(ctx, n); err != nil {
			return deleted, err
		}
		deleted++
	}
	return deleted, nil
}

// scan calls f with every message of stream, in order, to its end as it
// is when scan gets there.
func scan(ctx context.Context, js jetstream.JetStream, stream string, f func([]byte)) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("sweep: stream %s: %w", stream, err)
	}
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("sweep: read %s: %w", stream, err)
		}
		f(m.Data)
		seq = m.Sequence + 1
	}
}

// forNames calls f with every body object name in data.
func forNames(data []byte, f func(string)) {
	const n = 2 + 32
	for i := 0; ; {
		j := bytes.Index(data[i:], []byte("b-"))
		if j < 0 {
			return
		}
		i += j
		if i+n <= len(data) && isHex(data[i+2:i+n]) && (i+n == len(data) || !isHexDigit(data[i+n])) {
			f(string(data[i : i+n]))
		}
		i += 2
	}
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !isHexDigit(c) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
