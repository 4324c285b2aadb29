package token

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func randKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func testKeyring(t testing.TB, ids ...string) *Keyring {
	t.Helper()
	var keys []NamedKey
	for _, id := range ids {
		keys = append(keys, NamedKey{ID: id, Key: randKey(t)})
	}
	k, err := NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
}

func TestLoadKeyring(t *testing.T) {
	k1 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	k2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	short := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 16))
	tests := []struct {
		name    string
		content *string // nil: file is not created
		mode    os.FileMode
		wantErr []string // substrings; nil = success
		wantCur string
		wantIDs int
	}{
		{name: "missing file", wantErr: []string{"does not exist", "create one with: relay keygen --out "}},
		{name: "empty", content: ptr(""), wantErr: []string{"contains no keys", "create one with: relay keygen --out "}},
		{name: "only comments", content: ptr("# nothing\n\n   \n"), wantErr: []string{"contains no keys"}},
		{name: "bad base64", content: ptr("k1:!!!notbase64!!!\n"), wantErr: []string{"line 1", "not valid base64", "create one with"}},
		{name: "wrong length", content: ptr("# c\nk1:" + short + "\n"), wantErr: []string{"line 2", "must be 32 bytes, got 16", "create one with"}},
		{name: "bad key id", content: ptr("bad id:" + k1 + "\n"), wantErr: []string{"line 1", "key id is invalid"}},
		{name: "duplicate id", content: ptr("a:" + k1 + "\na:" + k2 + "\n"), wantErr: []string{"line 2", `"a" already used on line 1`}},
		{name: "group readable", content: ptr("a:" + k1 + "\n"), mode: 0o640, wantErr: []string{"readable by group or others", "chmod 600"}},
		{name: "world readable", content: ptr("a:" + k1 + "\n"), mode: 0o604, wantErr: []string{"chmod 600"}},
		{name: "one key with id", content: ptr("a:" + k1 + "\n"), wantCur: "a", wantIDs: 1},
		{name: "rotation: first is current", content: ptr("# rotated\n\nnew:" + k2 + "\n  old : " + k1 + "  \n"), wantCur: "new", wantIDs: 2},
		{name: "no id: derived", content: ptr(k1 + "\n"), wantCur: DeriveKeyID(bytes.Repeat([]byte{1}, 32)), wantIDs: 1},
		{name: "unpadded base64", content: ptr("a:" + strings.TrimRight(k1, "=") + "\n"), wantCur: "a", wantIDs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "token.key")
			if tt.content != nil {
				mode := tt.mode
				if mode == 0 {
					mode = 0o600
				}
				writeFile(t, path, *tt.content, mode)
			}
			kr, err := LoadKeyring(path)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("want error, got none")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				for _, secret := range []string{k1, k2, short, "notbase64"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error leaks key material: %q", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if kr.CurrentID() != tt.wantCur || len(kr.IDs()) != tt.wantIDs {
				t.Fatalf("current=%q ids=%v, want %q and %d ids", kr.CurrentID(), kr.IDs(), tt.wantCur, tt.wantIDs)
			}
		})
	}
	if _, err := LoadKeyring(""); err == nil || !strings.Contains(err.Error(), "RELAY_TOKEN_KEY_FILE") {
		t.Fatalf("empty path: %v", err)
	}
	if _, err := LoadKeyring(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
}

func ptr(s string) *string { return &s }

func TestGenerateKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	path := filepath.Join(dir, "token.key")
	id, err := GenerateKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %o, want 700", di.Mode().Perm())
	}
	kr, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if kr.CurrentID() != id {
		t.Fatalf("loaded current id %q, generated %q", kr.CurrentID(), id)
	}
	before, _ := os.ReadFile(path)
	_, err = GenerateKeyFile(path)
	if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second GenerateKeyFile: %v", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("existing key file was modified")
	}
	// Two generated keys differ.
	id2, err := GenerateKeyFile(filepath.Join(dir, "other.key"))
	if err != nil || id2 == id {
		t.Fatalf("second key: %q, %v", id2, err)
	}
}

func TestSealOpen(t *testing.T) {
	kr := testKeyring(t, "cur", "old")
	aad := []byte("relay_tokens/alerts")
	msg := []byte("hello sealed world")
	sealed, err := kr.Seal(aad, msg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, msg) {
		t.Fatal("plaintext visible in sealed data")
	}
	if sealed[0] != 1 || int(sealed[1]) != 3 || string(sealed[2:5]) != "cur" {
		t.Fatalf("header = %v", sealed[:5])
	}
	if id, ok := SealedKeyID(sealed); !ok || id != "cur" {
		t.Fatalf("SealedKeyID = %q %v", id, ok)
	}
	pt, id, err := kr.Open(aad, sealed)
	if err != nil || id != "cur" || !bytes.Equal(pt, msg) {
		t.Fatalf("Open = %q, %q, %v", pt, id, err)
	}
	// Nonces are random: sealing twice differs.
	sealed2, _ := kr.Seal(aad, msg)
	if bytes.Equal(sealed, sealed2) {
		t.Fatal("two seals are identical")
	}
	// Wrong additional data.
	if _, _, err := kr.Open([]byte("relay_tokens/other"), sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("wrong aad: %v", err)
	}
	// Any flipped bit.
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x40
		if _, _, err := kr.Open(aad, bad); !errors.Is(err, ErrOpen) {
			t.Fatalf("flip at %d: %v", i, err)
		}
	}
	// Same key id, different key material.
	other := testKeyring(t, "cur")
	if _, _, err := other.Open(aad, sealed); !errors.Is(err, ErrOpen) || errors.Is(err, ErrUnknownKey) {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestOpenUnknownKeyNamesID(t *testing.T) {
	sealed, err := testKeyring(t, "abc").Seal(nil, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, id, err := testKeyring(t, "def").Open(nil, sealed)
	if err == nil || !strings.Contains(err.Error(), `sealed with key "abc" which is not in the key file`) {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(err, ErrUnknownKey) || !errors.Is(err, ErrOpen) || id != "abc" {
		t.Fatalf("errors.Is / id: %v %q", err, id)
	}
}

func TestNewKeyringRejects(t *testing.T) {
	if _, err := NewKeyring(); err == nil {
		t.Fatal("empty keyring accepted")
	}
	if _, err := NewKeyring(NamedKey{ID: "a", Key: make([]byte, 31)}); err == nil || !strings.Contains(err.Error(), "must be 32 bytes, got 31") {
		t.Fatalf("short key: %v", err)
	}
	if _, err := NewKeyring(NamedKey{ID: strings.Repeat("a", 65), Key: make([]byte, 32)}); err == nil {
		t.Fatal("long id accepted")
	}
}

// FuzzOpen: Open never panics on arbitrary input, and Seal/Open round-trips
// any plaintext with any additional data.
func FuzzOpen(f *testing.F) {
	kr, err := NewKeyring(NamedKey{ID: "k1", Key: bytes.Repeat([]byte{7}, 32)}, NamedKey{ID: "k0", Key: bytes.Repeat([]byte{9}, 32)})
	if err != nil {
		f.Fatal(err)
	}
	valid, _ := kr.Seal([]byte("relay_tokens/alerts"), []byte(`{"account":"alerts"}`))
	f.Add([]byte("relay_tokens/alerts"), valid)
	f.Add([]byte(""), []byte{})
	f.Add([]byte("x"), []byte{1})
	f.Add([]byte("x"), []byte{1, 0})
	f.Add([]byte("x"), []byte{1, 255, 'a'})
	f.Add([]byte("x"), []byte{2, 2, 'k', '1'})
	f.Add([]byte("x"), append([]byte{1, 2, 'k', '1'}, make([]byte, 28)...))
	f.Add([]byte("relay_tokens/alerts"), valid[:len(valid)-1])
	f.Fuzz(func(t *testing.T, aad, data []byte) {
		pt, _, err := kr.Open(aad, data)
		if err == nil {
			// Only genuine seals open; re-sealing what opened round-trips.
			if id, ok := SealedKeyID(data); !ok || !kr.Has(id) {
				t.Fatalf("opened data with key id %q", id)
			}
		} else if !errors.Is(err, ErrOpen) {
			t.Fatalf("open error does not wrap ErrOpen: %v", err)
		}
		_ = pt
		sealed, err := kr.Seal(aad, data)
		if err != nil {
			t.Fatal(err)
		}
		got, id, err := kr.Open(aad, sealed)
		if err != nil || id != "k1" || !bytes.Equal(got, data) {
			t.Fatalf("round trip failed: id=%q err=%v", id, err)
		}
		if len(sealed) > 0 {
			bad := bytes.Clone(sealed)
			bad[len(bad)-1] ^= 1
			if _, _, err := kr.Open(aad, bad); err == nil {
				t.Fatal("tampered seal opened")
			}
		}
	})
}

func TestKeyringThen(t *testing.T) {
	oldKey, newKey := randKey(t), randKey(t)
	old, _ := NewKeyring(NamedKey{ID: "old", Key: oldKey})
	next, _ := NewKeyring(NamedKey{ID: "new", Key: newKey})
	aad := []byte("relay_tokens/alerts")
	sealedOld, err := old.Seal(aad, []byte("record"))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := next.Then(old)
	if err != nil {
		t.Fatal(err)
	}
	if ring.CurrentID() != "new" || strings.Join(ring.IDs(), ",") != "new,old" {
		t.Fatalf("ring current %s ids %v", ring.CurrentID(), ring.IDs())
	}
	if pt, id, err := ring.Open(aad, sealedOld); err != nil || id != "old" || string(pt) != "record" {
		t.Fatalf("old record through the merged ring: %q %s %v", pt, id, err)
	}
	sealedNew, _ := ring.Seal(aad, []byte("record"))
	if id, _ := SealedKeyID(sealedNew); id != "new" {
		t.Fatalf("merged ring seals with %s", id)
	}
	// The new key already listed in the old file (for opening): fine.
	both, _ := NewKeyring(NamedKey{ID: "old", Key: oldKey}, NamedKey{ID: "new", Key: newKey})
	if ring, err := next.Then(both); err != nil || len(ring.IDs()) != 2 {
		t.Fatalf("same key under the same id: %v %v", ring, err)
	}
	// Another key under an id in use: refused.
	clash, _ := NewKeyring(NamedKey{ID: "old", Key: randKey(t)})
	if _, err := clash.Then(old); err == nil || !strings.Contains(err.Error(), "two different keys") {
		t.Fatalf("clashing ids: %v", err)
	}
}
