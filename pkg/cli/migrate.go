package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
	"github.com/spf13/cobra"
)

// dbEndpoint is one side of `db migrate`: the store options that open it
// and how it is shown (never with a password).
type dbEndpoint struct {
	opts    store.Options
	display string
	// file is the SQLite file's absolute path, "" for PostgreSQL.
	file string
}

func (a *app) dbMigrateCmd() *cobra.Command {
	var from, to string
	var force bool
	cmd := &cobra.Command{
		Use:   "migrate --from SRC --to DST [--force]",
		Short: "Copy the whole database between SQLite and PostgreSQL, verified row for row (only while the server is stopped)",
		Long: `migrate copies every table of the database SRC into the database DST, keeping every ID, so that a server
started on DST carries on where SRC left off: nodes reconnect with their keys and addresses, nothing is registered
again. Either may be SQLite or PostgreSQL; SRC and DST are each:

  config                    the database the configuration names (database.type sqlite or postgres; with a
                            cluster_id, that tailnet's schema headscale_<cluster_id> alone)
  PATH                      a SQLite database file (DST is created when missing)
  postgres://... or postgresql://...
                            a PostgreSQL database as a libpq URL, e.g.
                            postgres://headscale@db.example:5432/headscale?sslmode=verify-full or, over the
                            unix socket, postgres:///headscale?host=/run/postgresql. The password comes from
                            the URL, PGPASSWORD or ~/.pgpass (PGPASSFILE) and is never printed.

It refuses while a server uses either database: when it answers on the configured unix socket (for config),
holds the SQLite file open, or has connections on the PostgreSQL database (a server's connections carry
application_name "headscale", or "headscale/<cluster_id>" for one of several tailnets). Stop it first (systemctl
stop headscale).

SRC is read in one consistent snapshot (SQLite: one read transaction; PostgreSQL: REPEATABLE READ READ ONLY);
schema migrations SRC lacks are applied to it first, as the server would at start. DST is brought to the same
schema and written in one transaction: the rows with their IDs, the ID sequences raised past SRC's (an ID used
and deleted on SRC is not handed out again), then every table is read back and compared with the snapshot by row
count and a SHA-256 checksum over a canonical encoding of its rows. Only when every table matches is the
transaction committed.

DST must hold no rows. --force lets it hold some: they are deleted first, in the same transaction, so a failed
copy still leaves them as they were.

Output: one line per table (rows and checksum) and then, for scripts,
  migrated <N> rows in <T> tables from <SRC> to <DST> (verified)
with PostgreSQL shown as a URL without password. Any refusal, error or mismatch exits 1 and leaves DST's rows as
they were (a new SQLite DST file is removed; an empty PostgreSQL database keeps the schema created in it).

Afterwards point database: in the configuration at DST (see docs/runbook.md) and start the server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg *config.Config
			loadCfg := func() (*config.Config, error) {
				if cfg == nil {
					c, _, err := a.loadConfig()
					if err != nil {
						return nil, err
					}
					cfg = c
				}
				return cfg, nil
			}
			src, err := dbEndpointFor(from, "--from", loadCfg)
			if err != nil {
				return err
			}
			dst, err := dbEndpointFor(to, "--to", loadCfg)
			if err != nil {
				return err
			}
			if src.display == dst.display {
				return fmt.Errorf("--from and --to name the same database (%s)", src.display)
			}
			if cfg != nil && unixsock.Answers(cfg.UnixSocket) {
				return fmt.Errorf("headscale is running (it answers on %s); stop it first: systemctl stop headscale", cfg.UnixSocket)
			}
			if src.file != "" {
				// Opening a missing file would create it.
				if _, err := os.Stat(src.file); err != nil {
					return fmt.Errorf("--from: no database at %s", src.file)
				}
			}
			ctx := cmd.Context()
			in, err := store.OpenIdle(ctx, src.opts)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			defer in.Close()
			created := false
			if dst.file != "" {
				if _, err := os.Lstat(dst.file); errors.Is(err, os.ErrNotExist) {
					created = true
				}
			}
			out, err := store.OpenIdle(ctx, dst.opts)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			res, err := store.Copy(ctx, in, out, store.CopyOptions{Force: force})
			if cerr := out.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err != nil {
				if created {
					for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
						os.Remove(dst.file + suffix)
					}
				}
				return err
			}
			type table struct {
				Table    string `json:"table"`
				Rows     int    `json:"rows"`
				Checksum string `json:"checksum"`
			}
			tables := make([]table, 0, len(res.Tables))
			for _, t := range res.Tables {
				tables = append(tables, table{t.Table, t.Rows, t.Checksum})
			}
			return a.print(map[string]any{"from": src.display, "to": dst.display, "rows": res.Rows, "tables": tables,
				"schemaVersion": res.SchemaVersion, "verified": true}, func(w *tabwriter.Writer) {
				for _, t := range res.Tables {
					fmt.Fprintf(w, "%s\t%d rows\tchecksum %.16s\tmatch\n", t.Table, t.Rows, t.Checksum)
				}
				w.Flush()
				fmt.Fprintf(w, "migrated %d rows in %d tables from %s to %s (verified)\n", res.Rows, len(res.Tables), src.display, dst.display)
			})
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the database to copy: config, a SQLite file or a postgres:// URL (required)")
	cmd.Flags().StringVar(&to, "to", "", "the database to write: config, a SQLite file or a postgres:// URL (required)")
	cmd.Flags().BoolVar(&force, "force", false, "allow a target that holds rows: they are deleted first, in the copy's transaction")
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("to")
	return cmd
}

// dbEndpointFor resolves one of `db migrate`'s --from/--to values.
func dbEndpointFor(v, flag string, loadCfg func() (*config.Config, error)) (dbEndpoint, error) {
	switch {
	case v == "":
		return dbEndpoint{}, fmt.Errorf("%s must not be empty", flag)
	case v == "config":
		cfg, err := loadCfg()
		if err != nil {
			return dbEndpoint{}, err
		}
		opts, err := server.StoreOptions(cfg)
		if err != nil {
			return dbEndpoint{}, err
		}
		opts.CheckpointInterval = -1
		if opts.Postgres != nil {
			display := opts.Postgres.Display()
			if opts.Postgres.Schema != "" {
				display += " (schema " + opts.Postgres.Schema + ")"
			}
			return dbEndpoint{opts: opts, display: display}, nil
		}
		abs, err := filepath.Abs(opts.Path)
		if err != nil {
			return dbEndpoint{}, fmt.Errorf("%s: %w", flag, err)
		}
		opts.Path = abs
		return dbEndpoint{opts: opts, display: abs, file: abs}, nil
	case strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://"):
		pgo, err := store.ParsePostgresURL(v)
		if err != nil {
			return dbEndpoint{}, fmt.Errorf("%s: %w", flag, err)
		}
		return dbEndpoint{opts: store.Options{Postgres: &pgo}, display: pgo.Display()}, nil
	case strings.Contains(v, "://"):
		return dbEndpoint{}, fmt.Errorf("%s: only postgres:// and postgresql:// URLs are databases; a SQLite database is given by its path", flag)
	}
	abs, err := filepath.Abs(v)
	if err != nil {
		return dbEndpoint{}, fmt.Errorf("%s: %w", flag, err)
	}
	return dbEndpoint{opts: store.FileOptions(abs), display: abs, file: abs}, nil
}
