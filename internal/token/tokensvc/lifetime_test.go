package tokensvc

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"relay365/internal/account"
)

// answerFront is a real HTTP token endpoint in front of the fake Office
// 365: refresh requests get the answer set with answer (status, content
// type, body) instead of the fake's; everything else (the consent's
// authorization code exchange) goes to the fake.
type answerFront struct {
	srv *httptest.Server

	mu          sync.Mutex
	status      int
	contentType string
	header      [2]string // one extra header of the answer
	body        string
	refreshes   int
	held        chan struct{} // set by hold: refresh requests wait for it to close
	entered     chan struct{} // one value per held refresh request
}

func newAnswerFront(e *env) *answerFront {
	f := &answerFront{}
	u, err := url.Parse(e.fake.AuthorityURL())
	if err != nil {
		e.t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		status, ctype, hdr, body := f.status, f.contentType, f.header, f.body
		held, entered := f.held, f.entered
		if r.PostForm.Get("grant_type") == "refresh_token" {
			f.refreshes++
		} else {
			held = nil
		}
		f.mu.Unlock()
		if held != nil {
			entered <- struct{}{}
			<-held
		}
		if r.PostForm.Get("grant_type") == "refresh_token" && status != 0 {
			w.Header().Set("Content-Type", ctype)
			if hdr[0] != "" {
				w.Header().Set(hdr[0], hdr[1])
			}
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
			return
		}
		form := r.PostForm.Encode() // ParseForm consumed the body
		r2 := r.Clone(r.Context())
		r2.Body, r2.ContentLength = http.NoBody, int64(len(form))
		if form != "" {
			r2.Body = readCloser{strings.NewReader(form)}
		}
		proxy.ServeHTTP(w, r2)
	}))
	e.t.Cleanup(f.srv.Close)
	return f
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

func (f *answerFront) answer(status int, contentType, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.contentType, f.body = status, contentType, body
}

func (f *answerFront) answerWithHeader(status int, contentType, body, name, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.contentType, f.body, f.header = status, contentType, body, [2]string{name, value}
}

// hold makes refresh requests wait, before they reach the identity
// platform, until release is called; entered receives once per request
// held.
func (f *answerFront) hold() (entered <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held, f.entered = make(chan struct{}), make(chan struct{}, 16)
	held := f.held
	return f.entered, func() { close(held) }
}

func (f *answerFront) refreshCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refreshes
}

// consentThrough connects alias with its token endpoint behind f.
func (e *env) consentThrough(f *answerFront, alias string) {
	e.t.Helper()
	e.consentWith(alias, func(a *account.Account) {
		a.TokenURL = f.srv.URL + "/contoso.onmicrosoft.com/oauth2/v2.0/token"
	})
}

// TestAnnouncedLifetimeIsBounded: the lifetime an identity platform
// announces (expires_in) drives the proactive refresh, so an absurd one
// must not stop it or turn it into a hot loop. Entra's access tokens live
// 60-90 minutes and a token lifetime policy allows 10 minutes to 1 day;
// a broken platform or a proxy in between may announce anything. A
// lifetime of decades meant the token service never refreshed again (a
// quiet account's refresh token then dies of inactivity after 90 days,
// and relay_token_expiry_timestamp_seconds, years ahead, keeps
// RelayTokenExpiringWithoutRefresh quiet); a lifetime of a second meant a
// refresh twice a second, forever.
func TestAnnouncedLifetimeIsBounded(t *testing.T) {
	for _, c := range []struct {
		name, contentType, body string
	}{
		{"68 years", "application/json; charset=utf-8", `{"token_type":"Bearer","expires_in":99999999999,"access_token":"AT-long","refresh_token":"RT-long"}`},
		{"1 second", "application/json; charset=utf-8", `{"token_type":"Bearer","expires_in":1,"access_token":"AT-short","refresh_token":"RT-short"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			f := newAnswerFront(e)
			e.replica("r1")
			e.consentThrough(f, "alerts")
			f.answer(http.StatusOK, c.contentType, c.body)
			e.clock.Advance(time.Minute)
			if _, err := e.client().ForceRefresh(e.ctx, "alerts"); err != nil {
				t.Fatal(err)
			}
			rec := e.record("alerts")
			if life := rec.Expiry.Sub(rec.LastRefresh); life < time.Minute || life > 24*time.Hour {
				t.Errorf("stored lifetime %v for the answer %s; want between 1m and 24h", life, c.body)
			}
			// The refresher parks on the next refresh: not sooner than
			// half a minute, not later than a day.
			now := e.clock.Now()
			due, err := e.clock.WaitTimer(e.ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if wait := due.Sub(now); wait < 30*time.Second || wait > 24*time.Hour {
				t.Errorf("next proactive refresh in %v; want between 30s and 24h", wait)
			}
			if n := f.refreshCalls(); n != 1 {
				t.Errorf("%d refresh requests, want 1", n)
			}
		})
	}
}
