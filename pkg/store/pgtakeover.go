package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// importingSchema is the schema ReplacePostgres builds the converted
// database in before it swaps it into place; one left by an interrupted
// takeover is dropped and built again.
const importingSchema = "headscale_importing"

// takeOverLock is the session advisory lock two servers taking over one
// database at once serialise on.
const takeOverLock = 7262730001

// ConnectPostgres connects to the database o names and returns the
// connection pool, without checking or changing what the database holds
// (reading a Headscale database before taking it over). Its errors name the
// database and never carry the password.
func ConnectPostgres(ctx context.Context, o PostgresOptions) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(o.connString())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: invalid connection settings (host, port, database, user or sslmode)", o)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to %s: %w", o, o.redact(err))
	}
	return db, nil
}

// ReplacePostgres puts data in place of the Headscale tables in the
// current schema (public, as a rule) of the database o names, keeping
// those tables, unchanged, in a new schema named keep:
//
//  1. the store's schema and data's rows are written into a schema of
//     their own (importingSchema) and the row counts checked;
//  2. one transaction creates keep, moves every table of the current
//     schema into it (their indexes, constraints and id sequences go with
//     them) and moves the converted tables into the current schema.
//
// PostgreSQL's DDL is transactional, so a crash leaves either the untouched
// Headscale tables (and an importing schema the next attempt drops) or the
// finished conversion. keep must not exist. The connecting role needs the
// CREATE privilege on the database; without it nothing is changed and the
// error says so.
func ReplacePostgres(ctx context.Context, o PostgresOptions, data ImportData, keep string) (ImportCounts, error) {
	o.Schema = ""
	db, err := ConnectPostgres(ctx, o)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o, o.redact(err))
	}
	defer conn.Close()
	// Held for the whole takeover: a second server waits here, then finds
	// the database already converted.
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, takeOverLock); err != nil {
		return nil, fmt.Errorf("lock %s for the takeover: %w", o, err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, takeOverLock)

	var current string
	var exists bool
	if err := conn.QueryRowContext(ctx, `SELECT current_schema(), EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, keep).Scan(&current, &exists); err != nil {
		return nil, fmt.Errorf("read the schemas of %s: %w", o, err)
	}
	if exists {
		return nil, fmt.Errorf("the schema %s already exists in %s; it may hold an earlier copy of Headscale's tables: rename or drop it first", keep, o)
	}
	if current == "" {
		return nil, fmt.Errorf("%s has no current schema (search_path names none that exists)", o)
	}
	if _, err := conn.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(importingSchema)+` CASCADE`); err != nil {
		return nil, fmt.Errorf("drop the unfinished conversion in %s: %w", o, err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(importingSchema)); err != nil {
		if pgCode(err) == "42501" { // insufficient_privilege
			return nil, fmt.Errorf("%s: taking over needs the CREATE privilege on the database (GRANT CREATE ON DATABASE %s TO %s); nothing was changed", o, quoteIdent(o.Name), quoteIdent(o.User))
		}
		return nil, fmt.Errorf("create the schema %s in %s: %w", importingSchema, o, err)
	}
	counts, err := importInto(ctx, o, data)
	if err != nil {
		conn.ExecContext(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+quoteIdent(importingSchema)+` CASCADE`)
		return nil, err
	}
	if err := swapSchemas(ctx, conn, current, keep); err != nil {
		conn.ExecContext(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+quoteIdent(importingSchema)+` CASCADE`)
		return nil, fmt.Errorf("put the converted tables in place in %s: %w (Headscale's tables were left as they were)", o, err)
	}
	return counts, nil
}

// importInto opens a store in importingSchema (creating this server's
// schema there), writes data and checks the row counts.
func importInto(ctx context.Context, o PostgresOptions, data ImportData) (ImportCounts, error) {
	o.Schema = importingSchema
	o.MaxOpenConns, o.MaxIdleConns = 2, 2
	s, err := Open(ctx, Options{Postgres: &o})
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer s.Close()
	if err := s.writeTx(ctx, func(tx *sql.Tx) error { return importRows(ctx, tx, data, s.d.raiseSequence) }); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	counts, err := countRows(ctx, s.read)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	want := ImportCounts{"users": len(data.Users), "pre_auth_keys": len(data.PreAuthKeys), "nodes": len(data.Nodes),
		"api_keys": len(data.APIKeys), "policies": len(data.Policies), "route_ids": len(data.RouteIDs)}
	for _, t := range importTables {
		if counts[t] != want[t] {
			return nil, fmt.Errorf("import: the written database holds %d rows in %s, want %d", counts[t], t, want[t])
		}
	}
	return counts, nil
}

// swapSchemas moves every table of schema current into a new schema keep,
// and every table of importingSchema into current, in one transaction.
func swapSchemas(ctx context.Context, conn *sql.Conn, current, keep string) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	tables := func(schema string) ([]string, error) {
		rows, err := tx.QueryContext(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, schema)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return nil, err
			}
			out = append(out, n)
		}
		return out, rows.Err()
	}
	old, err := tables(current)
	if err != nil {
		return err
	}
	if slices.Contains(old, "schema_migrations") {
		return errors.New("the current schema already holds this server's tables")
	}
	converted, err := tables(importingSchema)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(keep)); err != nil {
		return err
	}
	for _, t := range old {
		if _, err := tx.ExecContext(ctx, `ALTER TABLE `+quoteIdent(current)+`.`+quoteIdent(t)+` SET SCHEMA `+quoteIdent(keep)); err != nil {
			return err
		}
	}
	for _, t := range converted {
		if _, err := tx.ExecContext(ctx, `ALTER TABLE `+quoteIdent(importingSchema)+`.`+quoteIdent(t)+` SET SCHEMA `+quoteIdent(current)); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DROP SCHEMA `+quoteIdent(importingSchema)); err != nil {
		return err
	}
	return tx.Commit()
}

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }
