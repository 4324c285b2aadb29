// Package bodytest forges stored bodies for tests of what the relay does
// with a body rewritten behind its back.
package bodytest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/body"
)

// Replace stores content under object's name, as anyone allowed to
// publish into the bucket could: new chunks, and metadata naming them
// published after the original's, which is what a reader of the name
// finds. (The bucket refuses rollups, so nats.go's ObjectStore.Put cannot
// do it.)
func Replace(ctx context.Context, js jetstream.JetStream, object string, content []byte) error {
	obs, err := js.ObjectStore(ctx, body.Bucket)
	if err != nil {
		return err
	}
	info, err := obs.GetInfo(ctx, object)
	if err != nil {
		return err
	}
	info.NUID = "forged-" + info.NUID
	h := sha256.New()
	h.Write(content)
	info.Size, info.Chunks, info.Digest = uint64(len(content)), 1, jetstream.GetObjectDigestValue(h)
	meta, err := json.Marshal(info)
	if err != nil {
		return err
	}
	if _, err := js.Publish(ctx, "$O."+body.Bucket+".C."+info.NUID, content); err != nil {
		return err
	}
	_, err = js.Publish(ctx, "$O."+body.Bucket+".M."+base64.URLEncoding.EncodeToString([]byte(object)), meta)
	return err
}
