package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
	"github.com/spf13/cobra"
)

func (a *app) backupCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Write an online snapshot of the SQLite database (safe while the server runs)",
		Long: `backup writes a consistent snapshot of the database with SQLite's VACUUM INTO while the server keeps
serving. The snapshot is written under a temporary name with mode 0600, checked with PRAGMA integrity_check and
only then renamed into place; on failure nothing is left behind and the exit status is 1.

--output may name a new file or an existing directory; in a directory (the default is "backups" beside the
database) the file is called headscale-<version>-<UTC time>.sqlite. On success one line is printed:
  backup written: <path> (<bytes> bytes, integrity ok)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Database.Type != "sqlite" {
				return fmt.Errorf("backup supports database.type sqlite; for %s use its own tools (pg_dump)", cfg.Database.Type)
			}
			dst, err := backupPath(cfg, output, a.env.Version, time.Now())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			res, err := store.Backup(ctx, cfg.Database.SQLite.Path, dst)
			if err != nil {
				return err
			}
			// --output names the file here, so there is no -o format: the one
			// line is the interface scripts read.
			fmt.Fprintf(a.env.Stdout, "backup written: %s (%d bytes, integrity ok)\n", res.Path, res.Bytes)
			return nil
		},
	}
	cmd.Flags().StringVar(&output, "output", "", `file or existing directory to write to (default: "backups" beside the database)`)
	return cmd
}

// backupPath resolves --output: a new file is used as given; a directory
// (or the default backups directory, created 0700) gets a name carrying the
// version and the UTC time.
func backupPath(cfg *config.Config, output, version string, now time.Time) (string, error) {
	dir := output
	if output == "" {
		dir = filepath.Join(filepath.Dir(cfg.Database.SQLite.Path), "backups")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("creating backup directory: %w", err)
		}
	} else if fi, err := os.Stat(output); err != nil || !fi.IsDir() {
		if strings.HasSuffix(output, "/") {
			return "", fmt.Errorf("backup directory %s does not exist", output)
		}
		return output, nil
	}
	safe := strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, version)
	return filepath.Join(dir, fmt.Sprintf("headscale-%s-%s.sqlite", safe, now.UTC().Format("20060102T150405Z"))), nil
}

func (a *app) restoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore BACKUP",
		Short: "Replace the database with a backup (only while the server is stopped)",
		Long: `restore replaces the configured SQLite database with the backup file BACKUP. It refuses while a server
is running, checks the backup's integrity and schema version first, and keeps the current database beside it as
<database>.pre-restore-<UTC time> rather than deleting it. Start the server afterwards.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Database.Type != "sqlite" {
				return fmt.Errorf("restore supports database.type sqlite; for %s use its own tools", cfg.Database.Type)
			}
			if unixsock.Answers(cfg.UnixSocket) {
				return fmt.Errorf("headscale is running (it answers on %s); stop it first: systemctl stop headscale", cfg.UnixSocket)
			}
			res, err := store.Restore(cmd.Context(), args[0], cfg.Database.SQLite.Path)
			if err != nil {
				return err
			}
			return a.print(map[string]any{"database": res.Database, "previous": res.Aside, "schemaVersion": res.SchemaVersion}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "restored %s into %s (schema version %d)\n", args[0], res.Database, res.SchemaVersion)
				if res.Aside != "" {
					fmt.Fprintf(w, "the previous database is kept at %s\n", res.Aside)
				} else {
					fmt.Fprintln(w, "there was no previous database")
				}
			})
		},
	}
}

// checkMetrics fetches the metrics endpoint and checks it serves
// headscale's own metrics, for `health --metrics`.
func checkMetrics(ctx context.Context, addr string) error {
	if addr == "" {
		return errors.New("metrics_listen_addr is empty: metrics are disabled")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics_listen_addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	body, err := httpGet(ctx, "http://"+net.JoinHostPort(host, port)+"/metrics")
	if err != nil {
		return fmt.Errorf("metrics do not answer: %w", err)
	}
	if !strings.Contains(body, "headscale_nodes_total") {
		return fmt.Errorf("metrics at %s lack headscale_nodes_total", addr)
	}
	return nil
}
