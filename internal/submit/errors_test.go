package submit

import (
	"errors"
	"io"
	"net"
	"testing"
)

func TestClassifyNetworkErrorsAreTemporary(t *testing.T) {
	for _, err := range []error{io.EOF, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, errors.New("something new")} {
		e := Classify("dial", err)
		if e.Class != ClassTransient || !e.Temporary() || e.Reply() != "" {
			t.Errorf("%v: %+v", err, e)
		}
	}
}
