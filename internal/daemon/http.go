package daemon

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// newHTTPServer is the server of /status, /metrics, /healthz and /readyz:
// bounded in time (a client that sends nothing, or half a request, or
// sits on a kept-alive connection, is let go) and answering with the
// security headers on every response. Its listener bounds the connections
// (connlimit, refuseHTTP).
func newHTTPServer(cfg Config, h http.Handler) *http.Server {
	return &http.Server{
		Handler: securityHeaders(h),
		// Every route is a GET: the request is its headers.
		ReadHeaderTimeout: cfg.HTTPReadTimeout,
		ReadTimeout:       cfg.HTTPReadTimeout,
		WriteTimeout:      cfg.HTTPWriteTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
	}
}

// contentSecurityPolicy allows nothing to load or run (no script at all)
// but the status page's own <style> element, by its hash; nothing may
// frame the pages, change their base or take a form's data anywhere.
var contentSecurityPolicy = "default-src 'none'; style-src " + styleHashes(statusHTML) +
	"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// styleHashes is the CSP source list of the <style> elements in page:
// their text is static (no template action inside), so the hash of the
// template's text is the hash of every rendered page's.
func styleHashes(page string) string {
	var hashes []string
	for rest := page; ; {
		_, after, ok := strings.Cut(rest, "<style>")
		if !ok {
			break
		}
		css, next, ok := strings.Cut(after, "</style>")
		if !ok || strings.Contains(css, "{{") {
			panic("status.html: a <style> element must be closed and static")
		}
		sum := sha256.Sum256([]byte(css))
		hashes = append(hashes, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		rest = next
	}
	if len(hashes) == 0 {
		return "'none'"
	}
	return strings.Join(hashes, " ")
}

// securityHeaders sets, before h answers, what keeps a browser from
// running, framing or second-guessing anything the server sends: the
// status page shows text that comes from Microsoft, SMTP servers and
// account records (html/template escapes it; the policy is the second
// wall).
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

// refuseHTTP answers a connection beyond the limit with 503 and closes it.
// It does not wait for the request: it answers, stops writing, and reads
// what the client sent for a moment so that closing does not reset the
// connection before the client has read the answer.
func refuseHTTP(c net.Conn, reason string) {
	defer c.Close()
	body := reason + ", try again later\n"
	resp := fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n"+
		"Content-Security-Policy: %s\r\nX-Frame-Options: DENY\r\nX-Content-Type-Options: nosniff\r\n\r\n%s",
		len(body), contentSecurityPolicy, body)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, resp); err != nil {
		return
	}
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}
