package token

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
)

// KeySize is the length of a sealing key (AES-256).
const KeySize = 32

const (
	sealVersion  = 1
	nonceSize    = 12
	tagSize      = 16
	maxKeyFile   = 1 << 20
	keygenFormat = "create one with: relay keygen --out %s"
)

// ErrOpen is wrapped by every failure to open sealed data: wrong key,
// tampering, a record copied under another account's key, or garbage.
var ErrOpen = errors.New("wrong key or record moved/tampered")

// ErrUnknownKey is wrapped (together with ErrOpen) when sealed data names a
// key id that is not in the key ring.
var ErrUnknownKey = errors.New("sealing key not in key file")

type unknownKeyError struct{ id string }

func (e *unknownKeyError) Error() string {
	return fmt.Sprintf("sealed with key %q which is not in the key file (after a rotation keep the old key as a later line of RELAY_TOKEN_KEY_FILE)", e.id)
}

func (e *unknownKeyError) Is(target error) bool { return target == ErrUnknownKey || target == ErrOpen }

// NamedKey is one sealing key and its id.
type NamedKey struct {
	ID  string
	Key []byte
}

// Keyring holds the current sealing key and older keys still accepted for
// opening. It is immutable and safe for concurrent use.
type Keyring struct {
	current string
	ids     []string
	aeads   map[string]cipher.AEAD
}

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// NewKeyring builds a key ring from keys; the first is the current key.
func NewKeyring(keys ...NamedKey) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("key ring needs at least one key")
	}
	k := &Keyring{aeads: make(map[string]cipher.AEAD, len(keys))}
	for i, nk := range keys {
		if !keyIDRE.MatchString(nk.ID) {
			return nil, fmt.Errorf("key %d: id %q is invalid: use 1-64 letters, digits, '.', '_' or '-'", i+1, nk.ID)
		}
		if len(nk.Key) != KeySize {
			return nil, fmt.Errorf("key %q must be %d bytes, got %d", nk.ID, KeySize, len(nk.Key))
		}
		if _, dup := k.aeads[nk.ID]; dup {
			return nil, fmt.Errorf("key id %q appears twice", nk.ID)
		}
		block, err := aes.NewCipher(nk.Key)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", nk.ID, err)
		}
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", nk.ID, err)
		}
		k.aeads[nk.ID] = gcm
		k.ids = append(k.ids, nk.ID)
	}
	k.current = keys[0].ID
	return k, nil
}

// Then returns a key ring that seals with k's current key and opens with
// k's keys and then older's: the ring for re-sealing everything under a new
// key (k) while records are still sealed with the keys in use (older). An
// id in both rings must name the same key (the new key may already be
// listed in the key file for opening); two different keys under one id are
// refused.
func (k *Keyring) Then(older *Keyring) (*Keyring, error) {
	out := &Keyring{current: k.current, aeads: make(map[string]cipher.AEAD, len(k.ids)+len(older.ids))}
	for _, r := range []*Keyring{k, older} {
		for _, id := range r.ids {
			if prev, dup := out.aeads[id]; dup {
				if !sameKey(prev, r.aeads[id]) {
					return nil, fmt.Errorf("key id %q names two different keys in the two key files: give the new key its own id (create one with relay keygen)", id)
				}
				continue
			}
			out.aeads[id] = r.aeads[id]
			out.ids = append(out.ids, id)
		}
	}
	return out, nil
}

// sameKey reports whether two AEADs hold the same key: what one seals, the
// other opens.
func sameKey(a, b cipher.AEAD) bool {
	nonce := make([]byte, a.NonceSize())
	probe := a.Seal(nil, nonce, []byte("relay365 key probe"), nil)
	_, err := b.Open(nil, nonce, probe, nil)
	return err == nil
}

// CurrentID is the id of the key new data is sealed with.
func (k *Keyring) CurrentID() string { return k.current }

// IDs lists the key ids, current first.
func (k *Keyring) IDs() []string { return append([]string(nil), k.ids...) }

// Has reports whether the ring holds a key with this id.
func (k *Keyring) Has(id string) bool { _, ok := k.aeads[id]; return ok }

// Seal encrypts plaintext under the current key. The result is
//
//	version(1) | len(keyID) | keyID | nonce(12) | AES-256-GCM ciphertext+tag
//
// and both the header and aad are authenticated: the same aad must be given
// to Open.
func (k *Keyring) Seal(aad, plaintext []byte) ([]byte, error) {
	gcm := k.aeads[k.current]
	hdrLen := 2 + len(k.current)
	out := make([]byte, hdrLen+nonceSize, hdrLen+nonceSize+len(plaintext)+gcm.Overhead())
	out[0] = sealVersion
	out[1] = byte(len(k.current))
	copy(out[2:], k.current)
	nonce := out[hdrLen : hdrLen+nonceSize]
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, fmt.Errorf("seal: read random nonce: %w", err)
	}
	return gcm.Seal(out, nonce, plaintext, fullAAD(out[:hdrLen], aad)), nil
}

// Open decrypts data produced by Seal with any key of the ring and reports
// which key sealed it. Every failure wraps ErrOpen; an unknown key id also
// wraps ErrUnknownKey and names the id. Open never panics.
func (k *Keyring) Open(aad, sealed []byte) (plaintext []byte, keyID string, err error) {
	if len(sealed) < 2 {
		return nil, "", fmt.Errorf("%w (sealed data truncated)", ErrOpen)
	}
	if sealed[0] != sealVersion {
		return nil, "", fmt.Errorf("%w (unknown sealed format version %d)", ErrOpen, sealed[0])
	}
	hdrLen := 2 + int(sealed[1])
	if sealed[1] == 0 || len(sealed) < hdrLen+nonceSize+tagSize {
		return nil, "", fmt.Errorf("%w (sealed data truncated)", ErrOpen)
	}
	keyID = string(sealed[2:hdrLen])
	gcm, ok := k.aeads[keyID]
	if !ok {
		return nil, keyID, &unknownKeyError{id: keyID}
	}
	nonce := sealed[hdrLen : hdrLen+nonceSize]
	pt, err := gcm.Open(nil, nonce, sealed[hdrLen+nonceSize:], fullAAD(sealed[:hdrLen], aad))
	if err != nil {
		return nil, keyID, ErrOpen
	}
	return pt, keyID, nil
}

// SealedKeyID returns the key id named in sealed data without opening it.
func SealedKeyID(sealed []byte) (string, bool) {
	if len(sealed) < 2 || sealed[0] != sealVersion || sealed[1] == 0 || len(sealed) < 2+int(sealed[1]) {
		return "", false
	}
	return string(sealed[2 : 2+int(sealed[1])]), true
}

func fullAAD(header, aad []byte) []byte {
	b := make([]byte, 0, len(header)+len(aad))
	return append(append(b, header...), aad...)
}

// DeriveKeyID is the id given to a key written without one: the first 8
// hex characters of its SHA-256.
func DeriveKeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:4])
}

// LoadKeyring reads a key file (RELAY_TOKEN_KEY_FILE): one key per line as
// "<key-id>:<base64 of 32 bytes>" or just "<base64>" (id derived with
// DeriveKeyID); the first key is current, later ones are kept for opening
// data sealed before a rotation. Blank lines and lines starting with '#'
// are ignored. The file must not be readable by group or others. Errors
// never contain key material.
func LoadKeyring(path string) (*Keyring, error) {
	if path == "" {
		return nil, fmt.Errorf("no token key file given (RELAY_TOKEN_KEY_FILE is empty); "+keygenFormat, "PATH")
	}
	hint := fmt.Sprintf(keygenFormat, path)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("token key file %s does not exist; %s", path, hint)
	}
	if err != nil {
		return nil, fmt.Errorf("token key file %s: %v; %s", path, err, hint)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("token key file %s: %v; %s", path, err, hint)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("token key file %s is not a regular file; %s", path, hint)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 && !mountedSecret(fi) {
		return nil, fmt.Errorf("token key file %s has mode %04o and is readable by group or others: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("token key file %s: %v; %s", path, err, hint)
	}
	defer clear(data)
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("token key file %s is larger than 1 MiB, it is not a key file; %s", path, hint)
	}
	keys, err := parseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("token key file %s: %v; %s", path, err, hint)
	}
	defer func() {
		for _, k := range keys {
			clear(k.Key)
		}
	}()
	return NewKeyring(keys...)
}

func parseKeyFile(data []byte) ([]NamedKey, error) {
	var keys []NamedKey
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxKeyFile)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		id, b64, hasID := strings.Cut(s, ":")
		if !hasID {
			b64 = id
			id = ""
		}
		id, b64 = strings.TrimSpace(id), strings.TrimSpace(b64)
		if hasID && !keyIDRE.MatchString(id) {
			return nil, fmt.Errorf("line %d: key id is invalid: use 1-64 letters, digits, '.', '_' or '-' before the ':'", line)
		}
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			key, err = base64.RawStdEncoding.DecodeString(b64)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: key is not valid base64", line)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("line %d: key must be %d bytes, got %d", line, KeySize, len(key))
		}
		if !hasID {
			id = DeriveKeyID(key)
		}
		if prev, dup := seen[id]; dup {
			return nil, fmt.Errorf("line %d: key id %q already used on line %d", line, id, prev)
		}
		seen[id] = line
		keys = append(keys, NamedKey{ID: id, Key: key})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read: %v", err)
	}
	if len(keys) == 0 {
		return nil, errors.New("contains no keys")
	}
	return keys, nil
}

// GenerateKeyFile writes a new key file with one fresh random key (mode
// 0600, parent directory created 0700 if missing) and returns the key id.
// It never overwrites an existing file.
func GenerateKeyFile(path string) (keyID string, err error) {
	if path == "" {
		return "", errors.New("no key file path given")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("create directory for key file: %w", err)
		}
	}
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	keyID = DeriveKeyID(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("key file %s already exists: refusing to overwrite it, tokens sealed with it could no longer be opened (to rotate, put a new key as the first line and keep the old one below)", path)
	}
	if err != nil {
		return "", fmt.Errorf("create key file: %w", err)
	}
	content := fmt.Sprintf("# Relay365 token sealing key (AES-256). The first key seals; later keys only open.\n# Keep this file secret (mode 0600) and backed up: without it stored tokens are lost.\n%s:%s\n",
		keyID, base64.StdEncoding.EncodeToString(key))
	_, werr := f.WriteString(content)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("write key file %s: %w", path, werr)
	}
	return keyID, nil
}
