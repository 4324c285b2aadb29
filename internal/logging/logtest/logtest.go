// Package logtest captures the logs of a test so they can be searched (for
// the lines a failure must produce, and for secrets that must never be
// there).
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer safe for many goroutines (a logger shared by a
// server's handlers).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// Bytes is a copy of everything written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// String is everything written so far.
func (b *Buffer) String() string { return string(b.Bytes()) }
