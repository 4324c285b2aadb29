package token

import "testing"

// Sealing and opening a token record, as the token store does on every
// write and read. Run with go test -bench . -benchmem ./internal/token.

func benchKeyring(b *testing.B) *Keyring {
	k, err := NewKeyring(NamedKey{ID: "k1", Key: randKey(b)})
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// A token record is about this size: an access and a refresh token of
// some 1,500 bytes each plus the JSON around them.
var benchRecord = make([]byte, 3500)

func BenchmarkSeal(b *testing.B) {
	k := benchKeyring(b)
	aad := []byte("relay_tokens/alerts")
	b.SetBytes(int64(len(benchRecord)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Seal(aad, benchRecord); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	k := benchKeyring(b)
	aad := []byte("relay_tokens/alerts")
	sealed, err := k.Seal(aad, benchRecord)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchRecord)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := k.Open(aad, sealed); err != nil {
			b.Fatal(err)
		}
	}
}
