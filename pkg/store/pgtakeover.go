package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// importingSchema is the schema ReplacePostgres builds the converted
// database in before it swaps it into schema current: current$importing
// (public$importing; headscale_a$importing for a tenant), which is never
// another tenant's schema. One left by an interrupted takeover is dropped
// and built again.
func importingSchema(current string) string { return derivedSchema(current, "importing") }

// takeOverLockKind is the second key of the session advisory lock two
// servers taking over one schema at once serialise on
// (pg_advisory_lock(hashtext(schema), takeOverLockKind)): takeovers of two
// tenants do not wait for each other.
const takeOverLockKind = 72627301

// KeepSchema names the schema a takeover keeps Headscale's tables in:
// headscale_<version> (headscale_v0_27_1) for the default schema, and
// <schema>$<version> for a tenant's, so that two tenants' copies never meet
// and none is taken for a tenant's own schema.
func KeepSchema(schema, version string) string {
	v := strings.NewReplacer(".", "_", "-", "_", "+", "_").Replace(version)
	if schema == "" {
		return "headscale_" + v
	}
	return derivedSchema(schema, v)
}

// ConnectPostgres connects to the database o names and returns the
// connection pool, without checking or changing what the database holds
// (reading a Headscale database before taking it over). Its errors name the
// database and never carry the password.
//
// With a Schema, the connections' search_path is that schema (which need
// not exist: then nothing is found in it).
func ConnectPostgres(ctx context.Context, o PostgresOptions) (*sql.DB, error) {
	cfg, err := o.pgxConfig()
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o, err)
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
// current schema of the database o names (o.Schema, a tenant's, when set;
// else the default, public as a rule), keeping those tables, unchanged, in
// a new schema named keep (see KeepSchema):
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
	var current string
	if err := conn.QueryRowContext(ctx, `SELECT COALESCE(current_schema(), '')`).Scan(&current); err != nil {
		return nil, fmt.Errorf("read the schemas of %s: %w", o, err)
	}
	if current == "" {
		return nil, fmt.Errorf("%s has no current schema (search_path names none that exists)", o)
	}
	if o.Schema != "" && current != o.Schema {
		return nil, fmt.Errorf("%s: the current schema is %s, not the tenant's", o, quoteIdent(current))
	}
	importing := importingSchema(current)
	// Held for the whole takeover: a second server of this schema waits
	// here, then finds it already converted.
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(hashtext($1), $2)`, current, takeOverLockKind); err != nil {
		return nil, fmt.Errorf("lock %s for the takeover: %w", o, err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1), $2)`, current, takeOverLockKind)

	var exists bool
	if err := conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, keep).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read the schemas of %s: %w", o, err)
	}
	if exists {
		return nil, fmt.Errorf("the schema %s already exists in %s; it may hold an earlier copy of Headscale's tables: rename or drop it first", keep, o)
	}
	if _, err := conn.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(importing)+` CASCADE`); err != nil {
		return nil, fmt.Errorf("drop the unfinished conversion in %s: %w", o, err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(importing)); err != nil {
		if pgCode(err) == "42501" { // insufficient_privilege
			return nil, fmt.Errorf("%s: taking over needs the CREATE privilege on the database (GRANT CREATE ON DATABASE %s TO %s); nothing was changed", o, quoteIdent(o.Name), quoteIdent(o.User))
		}
		return nil, fmt.Errorf("create the schema %s in %s: %w", importing, o, err)
	}
	counts, err := importInto(ctx, o, importing, data)
	if err != nil {
		conn.ExecContext(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+quoteIdent(importing)+` CASCADE`)
		return nil, err
	}
	if err := swapSchemas(ctx, conn, current, importing, keep); err != nil {
		conn.ExecContext(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+quoteIdent(importing)+` CASCADE`)
		return nil, fmt.Errorf("put the converted tables in place in %s: %w (Headscale's tables were left as they were)", o, err)
	}
	return counts, nil
}

// importInto opens a store in the schema importing (creating this server's
// tables there), writes data and checks the row counts.
func importInto(ctx context.Context, o PostgresOptions, importing string, data ImportData) (ImportCounts, error) {
	o.Schema = importing
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
	for _, t := range tenantTables {
		if counts[t] != want[t] {
			return nil, fmt.Errorf("import: the written database holds %d rows in %s, want %d", counts[t], t, want[t])
		}
	}
	return counts, nil
}

// swapSchemas moves every table of schema current into a new schema keep,
// and every table of schema importing into current, in one transaction.
func swapSchemas(ctx context.Context, conn *sql.Conn, current, importing, keep string) error {
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
	converted, err := tables(importing)
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
		if _, err := tx.ExecContext(ctx, `ALTER TABLE `+quoteIdent(importing)+`.`+quoteIdent(t)+` SET SCHEMA `+quoteIdent(current)); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DROP SCHEMA `+quoteIdent(importing)); err != nil {
		return err
	}
	return tx.Commit()
}

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }
