package queue

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestReadBatchAck: the commit's answer decides between results, a
// fallback to single publishes, and an error.
func TestReadBatchAck(t *testing.T) {
	tests := []struct {
		name     string
		ack      string
		n        int
		wantSeqs []uint64
		fallback bool
		apiCode  jetstream.ErrorCode
	}{
		{"committed", `{"stream":"MAIL","seq":12,"batch":"B","count":3}`, 3, []uint64{10, 11, 12}, false, 0},
		{"duplicate inside", `{"error":{"code":400,"err_code":10201,"description":"atomic publish batch contains duplicate message id"}}`, 3, nil, true, 0},
		{"disabled", `{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"}}`, 2, nil, true, 0},
		{"too many in flight", `{"error":{"code":429,"err_code":10210,"description":"atomic publish too many inflight"}}`, 2, nil, true, 0},
		{"server without batches", `{"stream":"MAIL","seq":7}`, 3, nil, true, 0},
		{"another batch's ack", `{"stream":"MAIL","seq":7,"batch":"X","count":3}`, 3, nil, true, 0},
		{"full", `{"error":{"code":400,"err_code":10077,"description":"maximum messages exceeded"}}`, 2, nil, false, 10077},
		{"no leader", `{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`, 2, nil, false, 10008},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := readBatchAck([]byte(tt.ack), "B", tt.n)
			var fb *fallbackError
			var api *jetstream.APIError
			switch {
			case tt.fallback:
				if !errors.As(err, &fb) {
					t.Fatalf("got %v, %v; want a fallback", res, err)
				}
			case tt.apiCode != 0:
				if !errors.As(err, &api) || api.ErrorCode != tt.apiCode {
					t.Fatalf("got %v, %v; want API error %d", res, err, tt.apiCode)
				}
			default:
				if err != nil || len(res) != len(tt.wantSeqs) {
					t.Fatalf("got %v, %v; want seqs %v", res, err, tt.wantSeqs)
				}
				for i, r := range res {
					if r.Seq != tt.wantSeqs[i] || r.Duplicate {
						t.Fatalf("result %d: %+v, want seq %d", i, r, tt.wantSeqs[i])
					}
				}
			}
		})
	}
}

// FuzzReadBatchAck: whatever the answer, either an error or one result
// per message, contiguous and ending at the acknowledged sequence.
func FuzzReadBatchAck(f *testing.F) {
	f.Add([]byte(`{"stream":"MAIL","seq":12,"batch":"B","count":3}`), 3)
	f.Add([]byte(`{"stream":"MAIL","seq":2,"batch":"B","count":3}`), 3)
	f.Add([]byte(`{"error":{"code":400,"err_code":10201}}`), 1)
	f.Add([]byte(`not json`), 1)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		if n < 1 || n > BatchSize {
			return
		}
		res, err := readBatchAck(data, "B", n)
		if err != nil {
			return
		}
		if len(res) != n {
			t.Fatalf("%d results for %d messages", len(res), n)
		}
		for i := 1; i < n; i++ {
			if res[i].Seq != res[i-1].Seq+1 || res[i].Seq == 0 {
				t.Fatalf("results not contiguous: %+v", res)
			}
		}
		if res[0].Seq == 0 {
			t.Fatalf("sequence 0 reported stored: %+v", res)
		}
	})
}
