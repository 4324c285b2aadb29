package body_test

import (
	"bytes"
	"io"
	"testing"

	"relay365/internal/message"
)

// BenchmarkPut and BenchmarkOpenRead: storing and reading back a 30 MB
// body on an embedded server with the durable default (sync always).
func BenchmarkPut(b *testing.B) {
	_, ctx, s := startStore(b)
	raw := bigRawB(b, 30<<20)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		ref, err := s.Put(ctx, bytes.NewReader(raw), message.MaxSize)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = s.Delete(ctx, ref.Object)
		b.StartTimer()
	}
}

func BenchmarkOpenRead(b *testing.B) {
	_, ctx, s := startStore(b)
	raw := bigRawB(b, 30<<20)
	ref, err := s.Put(ctx, bytes.NewReader(raw), message.MaxSize)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(ref.Size)
	for b.Loop() {
		rc, err := s.Open(ctx, ref)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, message.CheckBody(rc)); err != nil || n != ref.Size {
			b.Fatal(n, err)
		}
		rc.Close()
	}
}

func bigRawB(b *testing.B, n int) []byte {
	var buf bytes.Buffer
	buf.WriteString("Subject: big\r\n\r\n")
	line := []byte("The quick brown fox jumps over the lazy dog; pack my box with jugs. 0123\r\n")
	for buf.Len() < n {
		buf.Write(line)
	}
	return buf.Bytes()
}
