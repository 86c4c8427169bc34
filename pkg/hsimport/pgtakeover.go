package hsimport

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
)

// TakeOverPostgresOptions configures TakeOverPostgres.
type TakeOverPostgresOptions struct {
	// DB is the configured PostgreSQL database.
	DB store.PostgresOptions
	// Convert are the settings the conversion depends on.
	Convert Options
	// Logger receives the report; nil discards it.
	Logger *slog.Logger
	// Socket is the configured unix socket (see TakeOverOptions).
	Socket string
	// ReportDir, when set, is where the report is written, as
	// headscale-import-<version>.report.txt (the state directory).
	ReportDir string
}

// TakeOverPostgres converts the PostgreSQL database opts.DB in place when
// Headscale wrote it, and does nothing (nil report, nil error) otherwise:
// when it is empty or this server's. Run it before the store opens the
// database.
//
// The database is read in one REPEATABLE READ transaction and checked (a
// release outside 0.23–0.29 or a current policy that does not compile in
// database mode is refused, and nothing is changed); the conversion is
// written into a schema of its own and checked; then one transaction moves
// Headscale's tables, unchanged, into the schema headscale_<version> (the
// copy: headscale_v0_27_1 for 0.27.1; <schema>$<version> in a tenant's
// schema, store.KeepSchema) and the converted tables into their place
// (store.ReplacePostgres). A crash leaves either Headscale's tables
// as they were or the finished conversion.
func TakeOverPostgres(ctx context.Context, opts TakeOverPostgresOptions) (*Report, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	desc := opts.DB.String()
	db, err := store.ConnectPostgres(ctx, opts.DB)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	found, err := hsdb.ProbePostgres(ctx, db)
	if err != nil || found == nil {
		if err != nil {
			err = fmt.Errorf("%s: %w", desc, err)
		}
		return nil, err
	}
	if opts.Socket != "" && unixsock.Answers(opts.Socket) {
		return nil, fmt.Errorf("%s is a Headscale database, and a server answers on %s: stop Headscale first (systemctl stop headscale); nothing was changed", desc, opts.Socket)
	}
	log.Info("the database is Headscale's: taking it over", "database", desc, "found", found.String())
	snap, err := readConsistent(ctx, db, desc)
	if err != nil {
		return nil, err
	}
	data, rep, err := Convert(snap, opts.Convert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (nothing was changed)", desc, err)
	}
	keep := store.KeepSchema(opts.DB.Schema, rep.Version)
	if _, err := store.ReplacePostgres(ctx, opts.DB, data, keep); err != nil {
		return nil, fmt.Errorf("converting the Headscale database: %w", err)
	}
	rep.Copy = "schema " + keep + " of " + desc
	rep.Database = desc
	if opts.ReportDir != "" {
		p := filepath.Join(opts.ReportDir, "headscale-import-"+rep.Version+reportSuffix)
		if err := os.WriteFile(p, []byte(rep.Text()), 0o600); err != nil {
			log.Warn("the takeover is done, but its report could not be written", "path", p, "err", err)
		} else {
			rep.ReportFile = p
		}
	}
	rep.Log(log)
	return rep, nil
}

// readConsistent reads the Headscale database in one REPEATABLE READ,
// read-only transaction.
func readConsistent(ctx context.Context, db *sql.DB, desc string) (*hsdb.Snapshot, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", desc, err)
	}
	defer tx.Rollback()
	return hsdb.ReadPostgres(ctx, tx, desc)
}
