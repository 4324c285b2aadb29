package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext returns a context that ends at the first SIGINT or
// SIGTERM. Only the first is the command's to handle: once it has
// arrived the handler is removed, so a second Ctrl-C (or SIGTERM) during
// relay serve's shutdown grace ends the process at once, as an operator
// pressing it again expects, instead of being swallowed while the grace
// runs out. Quitting then is as safe as a crash: a message not yet acked
// is delivered again after a restart (docs/design.md, the duplicate
// window), and nothing acked is lost.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // restores the default action: the next signal ends the process
	}()
	return ctx, stop
}
