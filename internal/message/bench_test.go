package message

import (
	"strings"
	"testing"
	"time"
)

// The hot path of every delivery: decode, validate, render. Run with
// go test -bench . -benchmem ./internal/message (BENCHMARKS.md).

func benchMessage() *Message {
	return &Message{
		ID: "alert-7f3a", Account: "alerts", From: "Ops Alerts <alerts@contoso.com>",
		To: []string{"ops@contoso.com", "oncall@fabrikam.com"}, Subject: "CPU high on web-3 — load 17.2",
		Text: strings.Repeat("load 17.2 on web-3, threshold 8\n", 50), HTML: "<p>load 17.2</p>",
		Headers: map[string]string{"X-Alert-Id": "7f3a"},
	}
}

func BenchmarkValidate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := benchMessage().Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeValidate(b *testing.B) {
	data, err := benchMessage().Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := Decode(data)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRender(b *testing.B) {
	m := benchMessage()
	if err := m.Validate(); err != nil {
		b.Fatal(err)
	}
	s := Sender{Mailbox: "alerts@contoso.com"}
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		r, err := Render(m, s, now)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(r.Data)))
	}
}
