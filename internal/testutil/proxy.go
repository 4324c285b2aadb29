package testutil

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Proxy is a plain HTTP forward proxy (absolute-URI requests, no CONNECT)
// that records the Proxy-Authorization header of each request it
// forwards, as a real proxy would see it. The fake Office 365's identity
// endpoints are plain HTTP on loopback, so a client told to use this
// proxy sends them through it.
type Proxy struct {
	Addr string // host:port

	mu    sync.Mutex
	auths []string // Proxy-Authorization of each request, in order
	paths []string // request path of each request
}

// StartProxy runs a Proxy until the test ends.
func StartProxy(t testing.TB) *Proxy {
	t.Helper()
	p := &Proxy{}
	out := &http.Transport{Proxy: nil}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect || !r.URL.IsAbs() {
			http.Error(w, "this test proxy forwards absolute-URI requests only", http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		p.auths = append(p.auths, r.Header.Get("Proxy-Authorization"))
		p.paths = append(p.paths, r.URL.Path)
		p.mu.Unlock()
		fwd := r.Clone(r.Context())
		fwd.RequestURI = ""
		fwd.Header.Del("Proxy-Authorization")
		fwd.Header.Del("Proxy-Connection")
		resp, err := out.RoundTrip(fwd)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(func() { srv.Close(); out.CloseIdleConnections() })
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// Requests is the number of requests forwarded whose path ends with
// suffix ("" for all), and the Proxy-Authorization headers they carried.
func (p *Proxy) Requests(suffix string) (n int, auths []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, path := range p.paths {
		if strings.HasSuffix(path, suffix) {
			n++
			auths = append(auths, p.auths[i])
		}
	}
	return n, auths
}
