package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relay365/internal/queue"
	"relay365/internal/relay"
	"relay365/internal/submit"
)

// An idle lane's pulls, as the server sees them (lane.run,
// DefaultIdleFetchWait). A JetStream pull is a core NATS request on
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> whose JSON body asks for a
// batch and an expiry; a second connection subscribed to that subject sees
// every pull the lane makes, in the order it made them.
//
// The expiry on the wire is not the lane's wait itself: nats.go's
// FetchContext derives it from the context deadline's remaining time,
// keeping a tenth of it (at most 1s) as the client's margin. asked
// undoes that, and the tests accept a wait a quarter below the one they
// expect (the time between the lane's WithTimeout and Fetch): far from the
// next step of a doubling, so a wait that failed to double or to reset
// still fails.

// pullReq is one pull request as the server received it.
type pullReq struct {
	reply     string // the pull's inbox, where its messages go
	at        time.Time
	Batch     int           `json:"batch"`
	Expires   time.Duration `json:"expires"`
	Heartbeat time.Duration `json:"idle_heartbeat"`
}

// asked is the wait the lane gave the pull's context.
func (p pullReq) asked() time.Duration {
	if p.Expires >= 9*time.Second {
		return p.Expires + time.Second
	}
	return p.Expires * 10 / 9
}

func (p pullReq) String() string {
	return fmt.Sprintf("{batch %d, wait %s, heartbeat %s}", p.Batch, p.asked().Round(time.Millisecond), p.Heartbeat)
}

// askedAbout says whether the pull asked for a wait of about want.
func (p pullReq) askedAbout(want time.Duration) bool {
	a := p.asked()
	return a > want-want/4 && a <= want+time.Millisecond
}

// pullWatch records the pulls of one account's consumer and, when asked,
// how they ended.
type pullWatch struct {
	mu     sync.Mutex
	reqs   []pullReq
	lacked map[string]int // inbox → messages its pull still lacked when it expired
}

// watchPulls subscribes a second connection to the pulls of alias's
// consumer. With inboxes it also subscribes to every inbox, to see which
// pull brought a message (one that asks for more than it gets, so it ends
// at its expiry); that is interest the server sees, so a test of
// pulls ended by the client must not ask for it (the server drops a
// waiting pull only once nobody listens on its inbox).
func watchPulls(h *harness, alias string, inboxes bool) *pullWatch {
	h.t.Helper()
	nc, err := nats.Connect(h.js.Conn().ConnectedUrl(), nats.Name("pull watch"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	w := &pullWatch{lacked: map[string]int{}}
	consumer := queue.AccountConsumer(alias)
	subject := fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", queue.StreamMail, consumer)
	// Callbacks of one subscription run one at a time in arrival order,
	// which for one client's requests is the order it sent them.
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		r := pullReq{reply: m.Reply, at: time.Now()}
		if err := json.Unmarshal(m.Data, &r); err != nil {
			h.t.Errorf("pull request %q: %v", m.Data, err)
			return
		}
		w.mu.Lock()
		w.reqs = append(w.reqs, r)
		w.mu.Unlock()
	}); err != nil {
		h.t.Fatal(err)
	}
	if inboxes {
		// A message reaches the pull's inbox under its own subject, so the
		// pull that brought one is told by its end instead: the 408 at
		// its expiry counts the messages it still lacked.
		if _, err := nc.Subscribe(nats.InboxPrefix+">", func(m *nats.Msg) {
			if m.Header.Get("Status") != "408" {
				return
			}
			n, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages"))
			if err != nil {
				return
			}
			w.mu.Lock()
			w.lacked[m.Subject] = n
			w.mu.Unlock()
		}); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
	return w
}

func (w *pullWatch) pulls() []pullReq {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]pullReq(nil), w.reqs...)
}

// bringer is the index of the first pull that expired with a message
// brought, or -1.
func (w *pullWatch) bringer() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, r := range w.reqs {
		if n, ok := w.lacked[r.reply]; ok && n < r.Batch {
			return i
		}
	}
	return -1
}

// consumerInfo is the server's view of alias's consumer.
func (h *harness) consumerInfo(ctx context.Context, alias string) *jetstream.ConsumerInfo {
	h.t.Helper()
	c, err := h.js.Consumer(ctx, queue.StreamMail, queue.AccountConsumer(alias))
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

// TestIdlePullsLengthen: an idle lane's pulls wait FetchWait, then twice
// as long after each empty pull up to IdleFetchWait, and a pull that
// brings a message sets the next back to FetchWait. Pulls under 10s carry
// no idle heartbeat (TestPauseEndsOpenPull sees one on a 30s pull).
func TestIdlePullsLengthen(t *testing.T) {
	const (
		fetchWait = 100 * time.Millisecond
		idleWait  = 800 * time.Millisecond
	)
	h := newHarness(t, setup{engine: relay.Config{FetchWait: fetchWait, IdleFetchWait: idleWait}})
	const alias = "idle"
	w := watchPulls(h, alias, true) // before the lane exists: its first pull is seen
	h.enroll(alias, "idle@contoso.com", "contoso.onmicrosoft.com", nil)

	ramp := []time.Duration{fetchWait, 2 * fetchWait, 4 * fetchWait, idleWait, idleWait, idleWait}
	h.waitFor("the idle pulls", func() bool { return len(w.pulls()) >= len(ramp) })
	pulls := w.pulls()
	for i, want := range ramp {
		if !pulls[i].askedAbout(want) {
			t.Fatalf("pull %d waited %s, want %s (pulls %v)", i+1, pulls[i].asked(), want, pulls)
		}
	}

	h.publish(alias, "id-wake", "wakes the lane")
	h.waitFor("the delivery", func() bool { return h.delivered()["wakes the lane"] == 1 })
	h.waitFor("two pulls after the one that brought the message", func() bool {
		b := w.bringer()
		return b >= 0 && len(w.pulls()) >= b+3
	})
	pulls, b := w.pulls(), w.bringer()
	// The last pull of the ramp may still have been open.
	if b < len(ramp)-1 || !pulls[b].askedAbout(idleWait) {
		t.Fatalf("pull %d brought the message, want one of %s from the %dth on (pulls %v)", b+1, idleWait, len(ramp), pulls)
	}
	for i, want := range []time.Duration{fetchWait, 2 * fetchWait} {
		if p := pulls[b+1+i]; !p.askedAbout(want) {
			t.Fatalf("pull %d after the message waited %s, want %s (pulls %v)", i+1, p.asked(), want, pulls)
		}
	}
	for i, p := range pulls {
		if p.Heartbeat != 0 {
			t.Fatalf("pull %d of %s asks for idle heartbeats every %s: only pulls of 10s or more do", i+1, p.asked(), p.Heartbeat)
		}
	}
}

// TestPauseEndsOpenPull: a lane that pauses ends its open pull at once,
// not at its expiry, so the server hands it nothing more, and it pulls
// nothing until the pause is over (the probe's one message first). A
// pull of 10s or more carries idle heartbeats at a third of its wait.
func TestPauseEndsOpenPull(t *testing.T) {
	const (
		fetchWait = 30 * time.Second // a 30s pull is open when the pause comes
		pause     = 6 * time.Second
		// dropped bounds how long the server may keep the ended pull:
		// well under its 30s expiry, and under the pause, after which
		// the probe opens a pull of its own.
		dropped = 5 * time.Second
		// retry holds the failed message back past the pull's drop and
		// the pause: redelivered into a pull left open, it would fill
		// the pull and end it too. The probe sends the second message.
		retry = 10 * time.Second
	)
	h := newHarness(t, setup{engine: relay.Config{
		FetchWait: fetchWait, IdleFetchWait: fetchWait,
		Pause: relay.Backoff{Base: pause, Max: pause},
		Retry: relay.Backoff{Base: retry, Max: retry},
	}})
	const alias = "paused"
	w := watchPulls(h, alias, false) // no inbox interest: the server must see the pull's go
	h.enroll(alias, "paused@contoso.com", "contoso.onmicrosoft.com", nil)

	h.waitFor("the first pull", func() bool { return len(w.pulls()) >= 1 })
	h.waitFor("the pull waiting at the server", func() bool { return h.consumerInfo(h.ctx, alias).NumWaiting == 1 })
	first := w.pulls()[0]
	if !first.askedAbout(fetchWait) || first.Heartbeat != fetchWait/3 {
		t.Fatalf("first pull %v, want a wait of %s with heartbeats every %s", first, fetchWait, fetchWait/3)
	}

	// 554 5.2.2 (mailbox full) pauses the account; the message arrives
	// in the open pull, which waits on for the lane's other sessions.
	h.fake.SetNextDataReply(1, reply(554, 5, 2, 2, "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException"))
	h.publish(alias, "id-1", "meets the pause")
	h.waitFor("the pause", func() bool { return h.lane(alias).Paused })
	st := h.lane(alias)
	if st.PauseClass != string(submit.ClassAccount) {
		t.Fatalf("paused for %q, want %q", st.PauseClass, submit.ClassAccount)
	}
	until := st.PausedUntil

	ctx, cancel := context.WithTimeout(h.ctx, dropped)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for h.consumerInfo(h.ctx, alias).NumWaiting != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("the server still holds the paused lane's pull %s after the pause (its expiry: %s)", dropped, first.Expires)
		case <-tick.C:
		}
	}

	h.publish(alias, "id-2", "queued during the pause")
	// The server sends the PubAck before it signals the stream's
	// consumers (from a queue), and only that signal counts the message
	// pending for the consumer: wait for it while the pause lasts.
	var info *jetstream.ConsumerInfo
	h.waitFor("the new message counted pending", func() bool {
		info = h.consumerInfo(h.ctx, alias)
		return info.NumPending >= 1 || !time.Now().Before(until)
	})
	if time.Now().Before(until) && (info.NumPending != 1 || info.NumWaiting != 0 || info.Delivered.Consumer != 1) {
		t.Fatalf("during the pause: %d messages not handed out, %d pulls waiting, %d deliveries; want the new message in the stream, no pull, the first message's one delivery",
			info.NumPending, info.NumWaiting, info.Delivered.Consumer)
	}

	h.waitFor("both deliveries", func() bool {
		d := h.delivered()
		return d["meets the pause"] == 1 && d["queued during the pause"] == 1
	})
	h.waitFor("the account to settle", func() bool { return h.queued() == 0 && !h.lane(alias).Paused })
	// Each message handed out once, and the first once more after its
	// retry wait: none fetched only to go back.
	if n := h.consumerInfo(h.ctx, alias).Delivered.Consumer; n != 3 {
		t.Fatalf("%d deliveries of 2 messages, want 3 (the failed one twice)", n)
	}
	pulls := w.pulls()
	if len(pulls) < 2 {
		t.Fatalf("pulls %v: want the probe's after the first", pulls)
	}
	if probe := pulls[1]; probe.Batch != 1 || probe.at.Before(until) {
		t.Fatalf("the pull after the pause asked for %d messages %s before the pause's end; want the probe's one message, after it (pulls %v)",
			probe.Batch, until.Sub(probe.at), pulls)
	}
}
