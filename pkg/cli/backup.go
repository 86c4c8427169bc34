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
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
	"github.com/spf13/cobra"
)

func (a *app) backupCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Write an online snapshot of the database, SQLite or PostgreSQL (safe while the server runs)",
		Long: `backup writes a consistent snapshot of the database while the server keeps serving, as a SQLite file:

  - SQLite: with SQLite's VACUUM INTO.
  - PostgreSQL: every table read in one REPEATABLE READ READ ONLY transaction and written into a new SQLite
    file of this server's schema, verified row for row against that snapshot (counts and checksums). The file
    restores into either engine (headscale restore, or headscale db migrate --from FILE --to ...), and needs no
    pg_dump of a matching version. With a cluster_id it holds that tailnet alone (its schema
    headscale_<cluster_id>), and restore writes into that schema.

The snapshot is written under a temporary name with mode 0600, checked with PRAGMA integrity_check and only then
renamed into place; on failure nothing is left behind and the exit status is 1.

--output may name a new file or an existing directory; in a directory (the default is "backups" beside the
SQLite database, or in state_dir for PostgreSQL) the file is called headscale-<version>-<UTC time>.sqlite. On
success one line is printed:
  backup written: <path> (<bytes> bytes, integrity ok)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Database.Type != "sqlite" && cfg.Database.Type != "postgres" {
				return fmt.Errorf("backup supports database.type sqlite and postgres, not %q", cfg.Database.Type)
			}
			dst, err := backupPath(cfg, output, a.env.Version, time.Now())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			var res store.BackupResult
			if cfg.Database.Type == "sqlite" {
				res, err = store.Backup(ctx, cfg.Database.SQLite.Path, dst)
			} else {
				res, err = backupPostgres(ctx, cfg, dst)
			}
			if err != nil {
				return err
			}
			// --output names the file here, so there is no -o format: the one
			// line is the interface scripts read.
			fmt.Fprintf(a.env.Stdout, "backup written: %s (%d bytes, integrity ok)\n", res.Path, res.Bytes)
			return nil
		},
	}
	cmd.Flags().StringVar(&output, "output", "", `file or existing directory to write to (default: "backups" beside the SQLite database, or in state_dir)`)
	return cmd
}

// configuredOptions are the store options of the configured database for
// an admin command (its PostgreSQL connections are named so that a running
// server's can be told apart).
func configuredOptions(cfg *config.Config) (store.Options, error) {
	opts, err := server.StoreOptions(cfg)
	if err != nil {
		return store.Options{}, err
	}
	if opts.Postgres != nil {
		opts.Postgres.ApplicationName = store.AdminApplicationName
		opts.Postgres.MaxOpenConns = 2
	}
	opts.CheckpointInterval = -1
	return opts, nil
}

// backupPostgres snapshots the configured PostgreSQL database into the
// new SQLite file dst. It never writes the database: one at another schema
// version than this binary's is refused rather than migrated under the
// server that runs on it.
func backupPostgres(ctx context.Context, cfg *config.Config, dst string) (store.BackupResult, error) {
	opts, err := configuredOptions(cfg)
	if err != nil {
		return store.BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	opts.NoMigrate = true
	s, err := store.Open(ctx, opts)
	if err != nil {
		return store.BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	defer s.Close()
	return store.BackupStore(ctx, s, dst)
}

// backupPath resolves --output: a new file is used as given; a directory
// (or the default backups directory, created 0700) gets a name carrying the
// version and the UTC time.
func backupPath(cfg *config.Config, output, version string, now time.Time) (string, error) {
	dir := output
	if output == "" {
		dir = defaultBackupDir(cfg)
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

// defaultBackupDir is "backups" beside the SQLite database, or in
// state_dir for PostgreSQL.
func defaultBackupDir(cfg *config.Config) string {
	if cfg.Database.Type == "postgres" {
		return filepath.Join(cfg.StateDir, "backups")
	}
	return filepath.Join(filepath.Dir(cfg.Database.SQLite.Path), "backups")
}

func (a *app) restoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore BACKUP",
		Short: "Replace the database with a backup, SQLite or PostgreSQL (only while the server is stopped)",
		Long: `restore replaces the configured database with the backup file BACKUP (a SQLite file written by backup,
from either engine). It refuses while a server is running, checks the backup's integrity and schema version
first, and keeps what it replaces:

  - SQLite: the current database is kept beside it as <database>.pre-restore-<UTC time>.
  - PostgreSQL: the current rows are first backed up to <state_dir>/backups/pre-restore-<UTC time>.sqlite, then
    every row is replaced with the backup's in one transaction, verified row for row before it commits (a
    failure leaves the database as it was).

Start the server afterwards.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Database.Type != "sqlite" && cfg.Database.Type != "postgres" {
				return fmt.Errorf("restore supports database.type sqlite and postgres, not %q", cfg.Database.Type)
			}
			if unixsock.Answers(cfg.UnixSocket) {
				return fmt.Errorf("headscale is running (it answers on %s); stop it first: systemctl stop headscale", cfg.UnixSocket)
			}
			var res store.RestoreResult
			if cfg.Database.Type == "sqlite" {
				res, err = store.Restore(cmd.Context(), args[0], cfg.Database.SQLite.Path)
			} else {
				res, err = restorePostgres(cmd.Context(), cfg, args[0])
			}
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

// restorePostgres replaces the configured PostgreSQL database's rows with
// the backup's, after backing the current rows up beside the other
// backups.
func restorePostgres(ctx context.Context, cfg *config.Config, backup string) (store.RestoreResult, error) {
	if _, err := store.CheckIntegrity(ctx, backup); err != nil {
		return store.RestoreResult{}, fmt.Errorf("restore: %s is not a usable backup: %w", backup, err)
	}
	opts, err := configuredOptions(cfg)
	if err != nil {
		return store.RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	s, err := store.OpenIdle(ctx, opts)
	if err != nil {
		return store.RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	defer s.Close()
	dir := defaultBackupDir(cfg)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return store.RestoreResult{}, fmt.Errorf("restore: creating backup directory: %w", err)
	}
	aside, err := store.BackupStore(ctx, s, filepath.Join(dir, "pre-restore-"+time.Now().UTC().Format("20060102T150405Z")+".sqlite"))
	if err != nil {
		return store.RestoreResult{}, fmt.Errorf("restore: keeping the current rows first: %w", err)
	}
	res, err := store.RestoreStore(ctx, backup, s)
	if err != nil {
		return store.RestoreResult{}, err
	}
	return store.RestoreResult{Database: s.Describe(), Aside: aside.Path, SchemaVersion: res.SchemaVersion}, nil
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
