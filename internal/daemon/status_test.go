package daemon

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"relay365/internal/relay"
)

// Text on the page comes from Microsoft, SMTP servers and account
// records: html/template must escape it, never run it.
func TestStatusPageEscapes(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	page := statusView{Now: now, Status: Status{Accounts: []AccountStatus{{
		Alias: "a", Mailbox: "a@contoso.com", SMTP: "smtp.office365.com:587", Auth: "OAuth2 delegated (XOAUTH2)",
		TokenState: "needs_consent", TokenExpiry: now.Add(-2 * time.Minute),
		LastError: `<script>alert(1)</script>`, Remedy: `run "authtool login" & <b>retry</b>`,
		Delivery: &relay.LaneStatus{Account: "a", Bound: true, ConnLimit: 3, RcptLimit: 100,
			Paused: true, PauseClass: "config", PauseReason: "smtp auth: 535 5.7.139", PauseRemedy: "Set-CASMailbox <x>"},
	}}}}
	var b strings.Builder
	if err := statusPage.Execute(&b, page); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, bad := range []string{"<script>alert", "<b>retry</b>"} {
		if strings.Contains(out, bad) {
			t.Errorf("page contains unescaped %q", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "2m0s ago", "smtp.office365.com:587", "100 recipients a message (452 4.5.3)", `class="state needs_consent"`, "Remedy: Set-CASMailbox &lt;x&gt;"} {
		if !strings.Contains(out, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestStatusContentNegotiation(t *testing.T) {
	for _, tc := range []struct {
		url, accept string
		html        bool
	}{
		{"/status", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", true}, // Chromium, Firefox
		{"/status", "*/*", false}, // curl
		{"/status", "", false},
		{"/status", "application/json, text/html", false},
		{"/status", "application/xhtml+xml", true},
		{"/status?format=json", "text/html", false},
		{"/status?format=html", "", true},
	} {
		r := httptest.NewRequest("GET", tc.url, nil)
		if tc.accept != "" {
			r.Header.Set("Accept", tc.accept)
		}
		if got := wantsHTML(r); got != tc.html {
			t.Errorf("%s Accept %q: html=%v, want %v", tc.url, tc.accept, got, tc.html)
		}
	}
}
