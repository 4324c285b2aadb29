package message

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// A whole message handed over in one Write (io.Copy from a bytes.Reader
// does that) is normalised a piece at a time: the writer's buffer stays
// near crlfChunk, not the message's size, and the output is the same as
// written in small pieces.
func TestCRLFWriterBoundedBuffer(t *testing.T) {
	raw := []byte("Subject: x\n\n" + strings.Repeat("a line with a bare LF\n", 200_000)) // ~4.4 MB
	var whole bytes.Buffer
	w := NewCRLFWriter(&whole)
	if n, err := w.Write(raw); err != nil || n != len(raw) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(raw))
	}
	if c := cap(w.buf); c > 3*crlfChunk {
		t.Errorf("buffer grew to %d bytes for a %d-byte Write; want at most %d", c, len(raw), 3*crlfChunk)
	}
	var small bytes.Buffer
	w2 := NewCRLFWriter(&small)
	if _, err := io.CopyBuffer(w2, bytes.NewBuffer(raw), make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole.Bytes(), small.Bytes()) {
		t.Fatal("one large Write and many small ones differ")
	}
	if want := len(raw) + 200_002; whole.Len() != want {
		t.Fatalf("normalised to %d bytes, want %d (every LF made CRLF)", whole.Len(), want)
	}
}
