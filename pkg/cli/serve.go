package cli

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/derp"
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
	srv, err := server.New(ctx, cfg, log, version)
	if err != nil {
		return err
	}
	if err := srv.Listen(ctx); err != nil {
		srv.Close()
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
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

// checkFiles validates the files the configuration names, as configtest
// promises, without opening the database or binding ports.
func checkFiles(cfg *config.Config) []string {
	var out []string
	for _, p := range cfg.DERP.Paths {
		if _, err := derp.LoadFile(p); err != nil {
			out = append(out, fmt.Sprintf("%s: derp.paths: %v", cfgName(cfg), err))
		}
	}
	if cfg.DNS.ExtraRecordsPath != "" {
		if _, err := config.LoadExtraRecords(cfg.DNS.ExtraRecordsPath); err != nil {
			out = append(out, fmt.Sprintf("%s: dns.extra_records_path: %v", cfgName(cfg), err))
		}
	}
	if cfg.Policy.Mode == "file" && cfg.Policy.Path != "" {
		if err := checkPolicyFile(cfg.Policy.Path); err != nil {
			out = append(out, fmt.Sprintf("%s: policy.path: %v", cfgName(cfg), err))
		}
	}
	if cfg.TLS.CertPath != "" {
		// The server loads the pair the same way before it opens anything.
		if _, err := tls.LoadX509KeyPair(cfg.TLS.CertPath, cfg.TLS.KeyPath); err != nil {
			out = append(out, fmt.Sprintf("%s: tls_cert_path: loading the certificate and key: %v", cfgName(cfg), err))
		}
	}
	return out
}

func cfgName(cfg *config.Config) string {
	if cfg.Source == "" {
		return "(defaults)"
	}
	return cfg.Source
}
