package relay_test

import (
	"testing"

	"github.com/emersion/go-smtp"
)

func TestSessionRefusalIsSentAgainAtOnceOnce(t *testing.T) {
	// A 530 5.7.57 to MAIL (the session's authentication, not the
	// message) and a 421 to the end of the content (the server closes
	// without taking the message) are answered on another connection at
	// once: delivered at the first delivery, with no retry delay. A
	// second such reply in a row takes the retry schedule: one immediate
	// try per transaction, no storm.
	notAuthenticated := &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	closing := &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available, closing transmission channel"}
	for _, tt := range []struct {
		name    string
		inject  func(h *harness)
		retried float64 // retries by the schedule
	}{
		{"530 to MAIL", func(h *harness) { h.fake.SetNextMailReply(1, notAuthenticated) }, 0},
		{"421 to the content", func(h *harness) { h.fake.SetNextDataReply(1, closing) }, 0},
		{"421 to the content twice", func(h *harness) { h.fake.SetNextDataReply(2, closing) }, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, setup{})
			h.enroll("alerts", "alerts@contoso.com", "contoso.onmicrosoft.com", nil)
			tt.inject(h)
			h.publish("alerts", "again-1", "again")
			h.waitFor("the delivery", func() bool { return h.delivered()["again"] == 1 && h.queued() == 0 })
			if got := h.outcome("alerts", "retried"); got != tt.retried {
				t.Errorf("retried %v times on the schedule, want %v", got, tt.retried)
			}
			if got, want := deliveries(t, h, "alerts"), uint64(tt.retried)+1; got != want {
				t.Errorf("%d deliveries from the stream, want %d", got, want)
			}
		})
	}
}
