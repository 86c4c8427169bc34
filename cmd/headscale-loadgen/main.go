// Command headscale-loadgen simulates many Tailscale nodes against a
// control server over the real protocol and reports how registration,
// convergence and endpoint-update propagation hold up. See package
// github.com/hsctl/headscale/pkg/loadgen and -help.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/hsctl/headscale/pkg/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := loadgen.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
