package consent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"relay365/internal/account"
	"relay365/internal/consent"
	"relay365/internal/fakeo365"
	"relay365/internal/token"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "11111111-2222-3333-4444-555555555555"
	mailbox  = "alerts@contoso.com"
)

// clock is a settable offset from the real time, for the fake's Now.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func startFake(t *testing.T, cfg fakeo365.Config) *fakeo365.Server {
	t.Helper()
	cfg.Dir = t.TempDir()
	if cfg.DefaultMailbox == "" {
		cfg.DefaultMailbox = mailbox
	}
	f, err := fakeo365.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func device(f *fakeo365.Server) consent.Device {
	return consent.Device{
		ClientID: clientID, DeviceURL: f.DeviceURL(tenant), TokenURL: f.TokenURL(tenant),
		Scopes: account.DefaultDelegatedScopes(), Interval: time.Millisecond,
	}
}

func TestDeviceFlowApprovesAfterPolls(t *testing.T) {
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: 3})
	var shown consent.DeviceCode
	tok, err := device(f).Run(testCtx(t), func(dc consent.DeviceCode) error { shown = dc; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.Expiry.IsZero() {
		t.Fatalf("incomplete token: access %t refresh %t expiry %v", tok.AccessToken != "", tok.RefreshToken != "", tok.Expiry)
	}
	if got, ok := f.AccessTokenValid(tok.AccessToken); !ok || got != mailbox {
		t.Fatalf("access token for %q (valid %t), want %s", got, ok, mailbox)
	}
	if n := f.TokenCalls(fakeo365.GrantDeviceCode); n != 4 {
		t.Fatalf("device polls = %d, want 3 pending + 1 approved", n)
	}
	if shown.UserCode == "" || !strings.HasSuffix(shown.VerificationURI, "/devicelogin") || time.Until(shown.Expires) < 10*time.Minute {
		t.Fatalf("shown code %+v", shown)
	}
	want := "To sign in, use a web browser to open the page " + shown.VerificationURI + " and enter the code " + shown.UserCode + " to authenticate."
	if shown.Message() != want {
		t.Fatalf("message %q, want Microsoft's wording %q", shown.Message(), want)
	}
}

func TestDeviceFlowSlowDownLengthensInterval(t *testing.T) {
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	f.SlowDownNextPolls(2)
	d := device(f)
	d.SlowDown = 50 * time.Millisecond
	start := time.Now()
	if _, err := d.Run(testCtx(t), func(consent.DeviceCode) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := f.TokenCalls(fakeo365.GrantDeviceCode); n != 3 {
		t.Fatalf("device polls = %d, want 2 slow_down + 1 approved", n)
	}
	// Waits after the two slow_downs are 1+50 and 1+100 ms at least:
	// timers never fire early, so this lower bound cannot flake.
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("finished after %s: slow_down did not lengthen the interval", el)
	}
}

func TestDeviceFlowTerminalAnswers(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(f *fakeo365.Server, d *consent.Device, c *clock) func(consent.DeviceCode)
		want   string
		remedy string
	}{
		{"declined", func(f *fakeo365.Server, _ *consent.Device, _ *clock) func(consent.DeviceCode) {
			f.DenyConsent(true)
			return nil
		}, "authorization_declined", "declined"},
		{"expired at the server", func(_ *fakeo365.Server, _ *consent.Device, c *clock) func(consent.DeviceCode) {
			return func(consent.DeviceCode) { c.advance(16 * time.Minute) }
		}, "expired_token", "expired"},
		{"unknown device code", func(_ *fakeo365.Server, d *consent.Device, _ *clock) func(consent.DeviceCode) {
			other := startFake(t, fakeo365.Config{})
			d.TokenURL = other.TokenURL(tenant) // polls a server that never issued the code
			return nil
		}, "bad_verification_code", "does not know this device code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{}
			f := startFake(t, fakeo365.Config{DeviceApproveAfter: 100, Now: c.now})
			d := device(f)
			onShow := tt.setup(f, &d, c)
			_, err := d.Run(testCtx(t), func(dc consent.DeviceCode) error {
				if onShow != nil {
					onShow(dc)
				}
				return nil
			})
			var de *consent.DeviceError
			if !errors.As(err, &de) || de.Err != tt.want {
				t.Fatalf("err = %v, want DeviceError %s", err, tt.want)
			}
			if !strings.Contains(de.Remedy, tt.remedy) || !strings.Contains(err.Error(), de.Remedy) {
				t.Fatalf("remedy %q (error %q), want it to mention %q", de.Remedy, err, tt.remedy)
			}
		})
	}
}

func TestDeviceFlowExpiresLocally(t *testing.T) {
	// The server's clock lags, so it never says expired_token: the code's
	// lifetime (expires_in, 1 s here) must end the wait on our side.
	c := &clock{}
	c.advance(-time.Hour)
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: 1 << 30, DeviceCodeTTL: time.Second, Now: c.now})
	d := device(f)
	d.Interval = 20 * time.Millisecond
	_, err := d.Run(testCtx(t), func(consent.DeviceCode) error { return nil })
	var de *consent.DeviceError
	if !errors.As(err, &de) || de.Err != "expired_token" {
		t.Fatalf("err = %v, want a local expired_token", err)
	}
	if f.TokenCalls(fakeo365.GrantDeviceCode) < 2 {
		t.Fatal("the flow did not poll while waiting")
	}
}

func TestDeviceFlowUnknownAppIsIdentityError(t *testing.T) {
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	f.RegisterApp(clientID, "s3cret") // confidential: no public flows without a secret
	_, err := device(f).Run(testCtx(t), func(consent.DeviceCode) error { return nil })
	var ie *token.IdentityError
	if !errors.As(err, &ie) || ie.Class != token.StateConfigError || !strings.Contains(ie.Remedy, "Allow public client flows") {
		t.Fatalf("err = %v, want a config_error naming the public client setting", err)
	}
}

func TestDeviceFlowCancelled(t *testing.T) {
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: 1 << 30})
	ctx, cancel := context.WithCancel(testCtx(t))
	_, err := device(f).Run(ctx, func(consent.DeviceCode) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// The user code and verification URIs of the device authorization answer
// (RFC 8628 §3.2) are printed for the person: control sequences in them
// reach the terminal escaped.
func TestDeviceCodeIsEscaped(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"device_code":"dc","user_code":"ABCD-EFGH\u001b[2J","verification_uri":"https://microsoft.com/devicelogin\u001b]0;owned\u0007",`+
			`"verification_uri_complete":"https://microsoft.com/devicelogin?code=\u009b31m\u202e","expires_in":900,"interval":5}`)
	}))
	defer srv.Close()
	d := consent.Device{ClientID: clientID, DeviceURL: srv.URL + "/devicecode", TokenURL: srv.URL + "/token", Scopes: account.DefaultDelegatedScopes()}
	stop := errors.New("shown")
	var shown consent.DeviceCode
	if _, err := d.Run(testCtx(t), func(dc consent.DeviceCode) error { shown = dc; return stop }); !errors.Is(err, stop) {
		t.Fatalf("err = %v", err)
	}
	printed := shown.Message() + shown.VerificationURIComplete
	for _, bad := range []string{"\x1b", "\x07", "\u009b", "\u202e"} {
		if strings.Contains(printed, bad) {
			t.Errorf("%q holds %q raw", printed, bad)
		}
	}
	if !strings.Contains(printed, `ABCD-EFGH\x1b[2J`) {
		t.Errorf("%q: the user code is not shown escaped", printed)
	}
}

// A temporary refusal of a poll (503 or 429 with Retry-After) keeps the
// sign-in going, and the next poll waits for Retry-After (1 s here), not
// only the polling interval.
func TestDeviceFlowHonoursRetryAfter(t *testing.T) {
	f := startFake(t, fakeo365.Config{DeviceApproveAfter: -1})
	d := device(f)
	var failed time.Time
	if _, err := d.Run(testCtx(t), func(consent.DeviceCode) error {
		f.FailNextTokenCalls(1) // the first poll: 503, Retry-After: 1
		failed = time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := f.TokenCalls(fakeo365.GrantDeviceCode); n != 2 {
		t.Fatalf("device polls = %d, want 1 refused + 1 approved", n)
	}
	// Timers never fire early, so this lower bound cannot flake.
	if el := time.Since(failed); el < time.Second {
		t.Fatalf("approved %s after the refusal: the poll after it did not wait for Retry-After", el)
	}
}
