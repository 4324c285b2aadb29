package queue_test

import (
	"net/url"
	"strings"
	"testing"

	"relay365/internal/queue"
)

// FuzzRedactURL: a NATS URL list put together from any scheme, user,
// password and host, next to any other list entry, never shows the
// password (or the token, a user without a password, as nats.go reads
// it) once redacted, as long as the URL means that password to nats.go
// (it splits the list at commas, and a URL's userinfo ends at the first
// '/', '?' or '#'). Redacting keeps the list's entries and changes
// nothing in a URL without userinfo.
func FuzzRedactURL(f *testing.F) {
	for _, s := range []struct{ scheme, user, pass, host, other string }{
		{"nats", "relay", "s3cret", "h:4222", ""},
		{"tls", "u", "s3cret", "b:4443", "nats://a:4222"},
		{"", "relay", "s3cret", "h:4222", ""},
		{"nats", "", "tok3n", "h:4222", ""},
		{"nats", "relay", "p@ss:word", "h:4222", "nats://x@y:1"},
		{"wss", "relay", "%2Cp%40", "[::1]:443", " , "},
		{"nats", "relay", "pass", "h:4222/path@x", ""},
		{"nats", "relay", "s3cret", "h:4222?q=a://b@c", ""},
		{"nats", "re:lay", "s3cret", "h", "127.0.0.1:4222"},
		{"nats", "relay", "s3cret", "h", "nats://other:pw@h2, nats://h3"},
		{"NATS", "relay", "very secret", "h", "x://"},
		{"nats", "relay", "s3cret", "", ""},
	} {
		f.Add(s.scheme, s.user, s.pass, s.host, s.other)
	}
	f.Fuzz(func(t *testing.T, scheme, user, pass, host, other string) {
		// Plain URLs are left as they are.
		if !strings.Contains(other, "@") {
			if got := queue.RedactURL(other); got != other {
				t.Fatalf("RedactURL(%q) = %q, changed a list without userinfo", other, got)
			}
		}

		userinfo := user + ":" + pass
		if pass == "" {
			userinfo = user
		}
		if strings.ContainsAny(userinfo, ",/?#") {
			return
		}
		u := userinfo + "@" + host
		if scheme != "" {
			u = scheme + "://" + u
		}
		// As nats.go reads it: a scheme is added when there is none, the
		// userinfo ends at the last "@" (a host may hold one too), and
		// the secret is the password, or the user when there is no
		// password at all (a token); an empty password is no secret.
		full := u
		if !strings.Contains(full, "://") {
			full = "nats://" + full
		}
		p, err := url.Parse(strings.TrimSpace(full))
		if err != nil || p.User == nil {
			return
		}
		secret := p.User.Username()
		if pw, ok := p.User.Password(); ok {
			secret = pw
		}
		// Short secrets turn up by chance in "redacted", the scheme or the host.
		if len(secret) < 4 {
			return
		}
		list := u
		if other != "" {
			list = other + "," + u
		}
		// Where the secret is also part of the rest, it may stay there.
		if strings.Count(list, secret) != 1 || strings.Contains(secret, "\x00") {
			return
		}
		got := queue.RedactURL(list)
		// (NUL for the word, which may spell part of a secret with what follows.)
		if strings.Contains(strings.ReplaceAll(got, "redacted", "\x00"), secret) {
			t.Fatalf("RedactURL(%q) = %q shows the secret %q", list, got, secret)
		}
		if strings.Count(got, ",") != strings.Count(list, ",") {
			t.Fatalf("RedactURL(%q) = %q, entries changed", list, got)
		}
	})
}
