package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
)

// serve runs the server until SIGINT or SIGTERM; SIGHUP reloads what can
// change without a restart.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, version string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Caught before New, which may wait long for PostgreSQL: a SIGHUP
	// meanwhile must not end the process (its default action); it is
	// handled once the server runs.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	srv, err := server.New(ctx, cfg, log, version)
	if err != nil {
		return err
	}
	if err := srv.Listen(ctx); err != nil {
		srv.Close()
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("reloading on SIGHUP")
				if err := srv.Reload(); err != nil {
					log.Error("reload failed; the running configuration stays in force", "err", err)
				}
			}
		}
	}()
	return srv.Run(ctx)
}
