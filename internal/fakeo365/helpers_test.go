package fakeo365

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"relay365/internal/clock"
)

const (
	testTenant   = "contoso.onmicrosoft.com"
	testClientID = "relay365-test-client"
	testRedirect = "http://127.0.0.1:53682/callback"
	testMailbox  = "alerts@contoso.com"
	smtpScope    = "https://outlook.office.com/SMTP.Send"
	appScope     = "https://outlook.office365.com/.default"
)

// newFakeClock is a manually advanced Config.Now.
func newFakeClock() *clock.Fake { return clock.NewFake(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)) }

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Dir = t.TempDir()
	s, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond (for checks that have no event to wait on).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// ---- identity helpers ---------------------------------------------------------

func oauthConfig(s *Server, scopes ...string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:    testClientID,
		RedirectURL: testRedirect,
		Scopes:      scopes,
		Endpoint: oauth2.Endpoint{
			AuthURL:       s.AuthURL(testTenant),
			TokenURL:      s.TokenURL(testTenant),
			DeviceAuthURL: s.DeviceURL(testTenant),
			AuthStyle:     oauth2.AuthStyleInParams,
		},
	}
}

// authorize follows nothing: it returns the query of the authorize
// endpoint's redirect back to the client.
func authorize(t *testing.T, authURL string) url.Values {
	t.Helper()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := noRedirect.Get(authURL)
	if err != nil {
		t.Fatalf("authorize: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %d, want 302", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("authorize: Location: %v", err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != testRedirect {
		t.Fatalf("authorize redirected to %q, want %q", got, testRedirect)
	}
	return loc.Query()
}

// getAuthCode runs authorize with PKCE for mailbox and returns code and verifier.
func getAuthCode(t *testing.T, conf *oauth2.Config, mailbox string) (code, verifier string) {
	t.Helper()
	verifier = oauth2.GenerateVerifier()
	q := authorize(t, conf.AuthCodeURL("state-1", oauth2.S256ChallengeOption(verifier),
		oauth2.SetAuthURLParam("login_hint", mailbox)))
	if q.Get("code") == "" || q.Get("state") != "state-1" {
		t.Fatalf("authorize redirect query %v: want code and state=state-1", q)
	}
	return q.Get("code"), verifier
}

// signIn runs the authorization code flow with PKCE.
func signIn(t *testing.T, conf *oauth2.Config, mailbox string) *oauth2.Token {
	t.Helper()
	code, verifier := getAuthCode(t, conf, mailbox)
	tok, err := conf.Exchange(testContext(t), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	return tok
}

// delegatedToken is an SMTP access token of mailbox.
func delegatedToken(t *testing.T, s *Server, mailbox string) string {
	t.Helper()
	return signIn(t, oauthConfig(s, smtpScope, "offline_access"), mailbox).AccessToken
}

func refresh(ctx context.Context, conf *oauth2.Config, refreshToken string) (*oauth2.Token, error) {
	return conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
}

// wantOAuthError checks that err is an Entra-shaped error answer.
func wantOAuthError(t *testing.T, err error, status int, code string, aadsts int) errorBody {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("got error %v, want an oauth2.RetrieveError %s AADSTS%d", err, code, aadsts)
	}
	var body errorBody
	if err := json.Unmarshal(re.Body, &body); err != nil {
		t.Fatalf("error body %q: %v", re.Body, err)
	}
	checkErrorBody(t, re.Response.StatusCode, body, status, code, aadsts)
	return body
}

func checkErrorBody(t *testing.T, gotStatus int, body errorBody, status int, code string, aadsts int) {
	t.Helper()
	if gotStatus != status || body.Error != code || !slices.Equal(body.ErrorCodes, []int{aadsts}) {
		t.Fatalf("got HTTP %d %s %v (%s), want HTTP %d %s [%d]",
			gotStatus, body.Error, body.ErrorCodes, body.ErrorDescription, status, code, aadsts)
	}
	if !strings.HasPrefix(body.ErrorDescription, fmt.Sprintf("AADSTS%d: ", aadsts)) ||
		body.TraceID == "" || body.CorrelationID == "" || body.Timestamp == "" || body.ErrorURI == "" {
		t.Fatalf("incomplete Entra error envelope: %+v", body)
	}
}

// tokenAnswer decodes either answer of the token endpoint.
type tokenAnswer struct {
	tokenBody
	errorBody
}

// postForm calls an identity endpoint directly, for flows where the exact
// answer of every call matters.
func postForm(t *testing.T, endpoint string, form url.Values) (int, tokenAnswer, http.Header) {
	t.Helper()
	resp, err := http.PostForm(endpoint, form)
	if err != nil {
		t.Fatalf("POST %s: %v", endpoint, err)
	}
	defer resp.Body.Close()
	var ans tokenAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		t.Fatalf("POST %s: decode: %v", endpoint, err)
	}
	return resp.StatusCode, ans, resp.Header
}

// ---- SMTP helpers ----------------------------------------------------------------

// xoauth2Client sends the XOAUTH2 response on the AUTH line, or, when
// twoStep, after the server's empty 334 challenge.
type xoauth2Client struct {
	user, token string
	twoStep     bool
	sent        bool
}

func (x *xoauth2Client) response() []byte {
	return []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01")
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	if x.twoStep {
		return "XOAUTH2", nil, nil
	}
	x.sent = true
	return "XOAUTH2", x.response(), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if x.sent || len(challenge) != 0 {
		return nil, fmt.Errorf("unexpected server challenge %q", challenge)
	}
	x.sent = true
	return x.response(), nil
}

// rawSASL sends a fixed initial response.
type rawSASL struct {
	mech string
	ir   []byte
}

func (r rawSASL) Start() (string, []byte, error) { return r.mech, r.ir, nil }
func (r rawSASL) Next(c []byte) ([]byte, error)  { return nil, fmt.Errorf("unexpected challenge %q", c) }

func dialTLS(t *testing.T, s *Server) *smtp.Client { return dialTLSConfig(t, s, nil) }

func dialTLSConfig(t *testing.T, s *Server, cfg *tls.Config) *smtp.Client {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.RootCAs = s.CertPool()
	c, err := smtp.DialStartTLS(s.SMTPAddr(), cfg)
	if err != nil {
		t.Fatalf("DialStartTLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// authedClient is a TLS connection authenticated with XOAUTH2.
func authedClient(t *testing.T, s *Server, user, token string) *smtp.Client {
	t.Helper()
	c := dialTLS(t, s)
	if err := c.Auth(&xoauth2Client{user: user, token: token}); err != nil {
		t.Fatalf("AUTH XOAUTH2 as %s: %v", user, err)
	}
	return c
}

func sendMessage(c *smtp.Client, from string, to []string, data []byte) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	return w.Close()
}

func testMessage(headerFrom, subject string) []byte {
	return []byte("From: Alerts <" + headerFrom + ">\r\n" +
		"To: <ops@fabrikam.com>\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <" + newOpaqueToken() + "@relay365.test>\r\n" +
		"\r\n" +
		"Disk almost full.\r\n")
}

// send sends testMessage from the mailbox itself to one recipient.
func send(c *smtp.Client, mailbox string) error {
	return sendMessage(c, mailbox, []string{"ops@fabrikam.com"}, testMessage(mailbox, "alert"))
}

func wantSMTPError(t *testing.T, err error, code int, enhanced smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enhanced {
		t.Fatalf("got %v, want SMTP %d %d.%d.%d", err, code, enhanced[0], enhanced[1], enhanced[2])
	}
	return se
}
