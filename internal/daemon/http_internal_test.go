package daemon

import (
	"net/http"
	"testing"
)

// The server is built with every bound set (the write timeout has no
// behavioural test: it needs a handler slower than it).
func TestHTTPServerBounds(t *testing.T) {
	var c Config
	c.Defaults()
	srv := newHTTPServer(c, http.NotFoundHandler())
	if srv.ReadHeaderTimeout != DefaultHTTPReadTimeout || srv.ReadTimeout != DefaultHTTPReadTimeout ||
		srv.WriteTimeout != DefaultHTTPWriteTimeout || srv.IdleTimeout != DefaultHTTPIdleTimeout {
		t.Fatalf("server bounds: header %s read %s write %s idle %s", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
	}
	if c.HTTPMaxConns != DefaultHTTPMaxConns || DefaultHTTPMaxConns <= 0 {
		t.Fatalf("max conns %d", c.HTTPMaxConns)
	}
	// The handler /status's own work must fit in the write timeout.
	if DefaultHTTPWriteTimeout <= statusTimeout {
		t.Fatalf("write timeout %s does not leave room for /status (%s)", DefaultHTTPWriteTimeout, statusTimeout)
	}
}
