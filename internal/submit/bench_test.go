package submit_test

import (
	"strings"
	"testing"

	"relay365/internal/submit"
)

// XOAUTH2 encoding, once per SMTP session. Run with
// go test -bench XOAUTH2 -benchmem ./internal/submit.
func BenchmarkXOAUTH2Response(b *testing.B) {
	tok := strings.Repeat("x", 1500) // Entra access tokens are 1–2 KB
	b.ReportAllocs()
	for b.Loop() {
		if r := submit.XOAUTH2Response("alerts@contoso.com", tok); len(r) == 0 {
			b.Fatal("empty")
		}
	}
}

func BenchmarkXOAUTH2Start(b *testing.B) {
	tok := strings.Repeat("x", 1500)
	b.ReportAllocs()
	for b.Loop() {
		if _, ir, err := submit.NewXOAUTH2("alerts@contoso.com", tok).Start(); err != nil || len(ir) == 0 {
			b.Fatal(err)
		}
	}
}
