package producer_test

import (
	"runtime"
	"testing"
	"weak"

	"relay365/internal/queue/queuetest"
	"relay365/producer"
)

// A service may make a Producer per request on one long-lived
// connection. Dropped, each must be collectable: the error handler New
// adds to the connection (for ErrPermission) must not keep every
// Producer ever made reachable, one more link in a chain per New.
func TestNewPerCallDoesNotPileUpOnTheConnection(t *testing.T) {
	env, _ := queuetest.StartMail(t)
	var first weak.Pointer[producer.Producer]
	for i := range 1000 {
		p, err := producer.New(env.NC)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = weak.Make(p)
		}
	}
	for i := 0; first.Value() != nil; i++ {
		if i == 20 {
			t.Fatal("the first of 1000 Producers dropped is still reachable after 20 collections: the connection keeps every Producer made on it")
		}
		runtime.GC()
	}
}
