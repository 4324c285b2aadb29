package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LeaderReader reads a KV bucket's newest values from its stream's
// leader, never by a direct get (docs/design.md §7.10).
//
// Not kv.Get: with the bucket's AllowDirect, which nats.go's KV sets,
// Get is a direct get, which any replica that counts itself current may
// answer, and the one on the client's own server answers first. A
// replica restarted after a server's outage counts itself current as
// soon as it has applied its own log (or 90% of what it knows to be
// committed), before it has caught up with what its group committed
// while it was down; so a value written then reads as missing or as
// the one before. Only the stream leader answers STREAM.MSG.GET, and a
// leader has applied everything committed before it answers: a value
// whose write was confirmed is found. A role reading this way needs
// $JS.API.STREAM.MSG.GET.KV_<bucket> (internal/roles kvRead).
type LeaderReader struct {
	nc     *nats.Conn
	bucket string
	// get is the JetStream API subject of the stream leader's message
	// get for the bucket's stream; timeout bounds a read whose context
	// has no deadline, as jetstream's own requests are bounded.
	get     string
	timeout time.Duration
}

// NewLeaderReader reads bucket through js's connection and API prefix.
func NewLeaderReader(js jetstream.JetStream, bucket string) *LeaderReader {
	o := js.Options()
	return &LeaderReader{nc: js.Conn(), bucket: bucket, get: apiPrefix(o) + "STREAM.MSG.GET.KV_" + bucket, timeout: o.DefaultTimeout}
}

// apiPrefix is the JetStream API prefix js's options name, as
// jetstream.NewWithAPIPrefix and NewWithDomain derive it.
func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	}
	return jetstream.DefaultAPIPrefix
}

// Last reads key's newest value and its revision (JetStream's
// STREAM.MSG.GET with last_by_subj); found is false when the key has no
// value or its newest entry is a deletion or purge (the KV-Operation
// header, as jetstream.KeyValue.Get reads it). With no leader (an
// election under way) it fails: nothing is decided on a guess.
func (r *LeaderReader) Last(ctx context.Context, key string) (value []byte, rev uint64, found bool, err error) {
	if _, ok := ctx.Deadline(); !ok && r.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	req, err := json.Marshal(struct {
		LastBySubj string `json:"last_by_subj"`
	}{"$KV." + r.bucket + "." + key})
	if err != nil {
		return nil, 0, false, err
	}
	reply, err := r.nc.RequestWithContext(ctx, r.get, req)
	if err != nil {
		return nil, 0, false, err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs"`
			Data   []byte `json:"data"`
		} `json:"message"`
	}
	switch err := json.Unmarshal(reply.Data, &resp); {
	case err != nil:
		return nil, 0, false, fmt.Errorf("undecodable answer from JetStream: %w", err)
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, 0, false, nil
	case resp.Error != nil:
		return nil, 0, false, resp.Error
	case resp.Message == nil:
		return nil, 0, false, errors.New("JetStream answered a message get with no message")
	}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return nil, 0, false, fmt.Errorf("undecodable headers from JetStream: %w", err)
		}
		if op := h.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			return nil, resp.Message.Seq, false, nil
		}
	}
	return resp.Message.Data, resp.Message.Seq, true, nil
}
