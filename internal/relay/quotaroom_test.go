package relay_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay365/internal/submit"
)

// TestQuotaPauseWaitsForTheDayWindow: Office 365's day limit (550 5.1.90,
// or 554 5.2.0 SubmissionQuotaExceeded met again by the probe, when a
// minute's rate would have cleared) pauses the account until the pacer's
// record says the rolling 24 hours have room: when the oldest recipients
// it counts leave the window (their ten-minute slot's end plus a day),
// jittered by at most the probe schedule's Max; not on the probe schedule
// (1 to 15 minutes), which probed the spent day about a hundred times
// with a real message each.
func TestQuotaPauseWaitsForTheDayWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse func(h *harness, mailbox string)
		pauses float64 // quota pauses before the day's wait
	}{
		{"5.1.90", func(h *harness, _ string) {
			h.fake.SetNextDataReply(1, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 90},
				Message: "Your message can't be sent because you've reached your daily limit for message recipients"})
		}, 1},
		{"5.2.0", func(h *harness, mailbox string) { h.fake.SetQuotaExceeded(mailbox, true) }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, setup{})
			mailbox := "day@contoso.com"
			a := h.enroll("day", mailbox, "contoso.onmicrosoft.com", nil)
			h.publish(a.Alias, "first", "first")
			h.waitFor("the first message", func() bool { return h.delivered()["first"] == 1 })

			var rec struct {
				Rcpts []struct{ T int64 } `json:"rcpts"`
			}
			if err := json.Unmarshal(h.pacing("day=contoso.com").Value(), &rec); err != nil || len(rec.Rcpts) == 0 {
				t.Fatalf("pacing record: %+v, %v", rec, err)
			}
			room := time.Unix(rec.Rcpts[0].T, 0).Add(10*time.Minute + 24*time.Hour)

			tc.refuse(h, mailbox)
			h.publish(a.Alias, "second", "second")
			h.waitFor("the quota pause", func() bool {
				return h.metric("relay_account_pauses_total", "account", a.Alias, "class", string(submit.ClassQuota)) >= tc.pauses
			})
			st := h.lane(a.Alias)
			jitter := h.setup.engine.Pause.Max
			if !st.Paused || st.PausedUntil.Before(room) || st.PausedUntil.After(room.Add(jitter)) {
				t.Fatalf("paused %v until %s; want until %s (+ up to %s), when the first message's recipients leave the 24 hours",
					st.Paused, st.PausedUntil.Format(time.RFC3339Nano), room.Format(time.RFC3339Nano), jitter)
			}
			if len(h.deadLetters(a.Alias)) > 0 {
				t.Fatal("the quota dead-lettered the message")
			}
		})
	}
}
