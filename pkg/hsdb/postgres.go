package hsdb

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
)

// qPgTables lists the base tables of the connection's current schema (the
// first of its search_path), where Headscale created its tables.
const qPgTables = `SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`

// qPgColumns lists the columns of one table of the current schema.
const qPgColumns = `SELECT column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1`

// PostgresTables lists the tables of db's current schema.
func PostgresTables(ctx context.Context, db Queryer) ([]string, error) {
	rows, err := db.QueryContext(ctx, qPgTables)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("list tables: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return out, nil
}

// ProbePostgres names the Headscale release that wrote the PostgreSQL
// database behind db (its current schema), reading it without changing it.
// It returns nil and no error for an empty database and for this server's
// own.
func ProbePostgres(ctx context.Context, db Queryer) (*Database, error) {
	tables, err := PostgresTables(ctx, db)
	if err != nil {
		return nil, err
	}
	if len(tables) == 0 || slices.Contains(tables, "schema_migrations") {
		return nil, nil
	}
	return Recognise(ctx, db, tables)
}

// ReadPostgres checks the Headscale database behind db (PostgreSQL, its
// current schema) and reads everything into a Snapshot, as Read does for a
// SQLite file; desc names the database in errors and in Snapshot.Path. Run
// it in a REPEATABLE READ transaction (db a *sql.Tx) for a consistent
// read; the session's TimeZone does not matter (times are read with their
// offset). A database that is not from Headscale 0.23–0.29, lacks a table
// or column its release has, or holds a value that cannot be read in a
// required column is refused with an error wrapping ErrRefused.
func ReadPostgres(ctx context.Context, db Queryer, desc string) (*Snapshot, error) {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrRefused, desc, fmt.Sprintf(format, args...))
	}
	tables, err := PostgresTables(ctx, db)
	if err != nil {
		return nil, refuse("%v", err)
	}
	d, err := Recognise(ctx, db, tables)
	if err != nil {
		return nil, refuse("%v", err)
	}
	if d == nil {
		return nil, refuse("it is not a Headscale database (tables: %s)", strings.Join(tables, ", "))
	}
	if !d.Supported() {
		return nil, refuse("it is %s; this server takes over Headscale 0.23.0 through 0.29.2 only", d)
	}
	r := &reader{ctx: ctx, db: db, pg: true, snap: &Snapshot{Path: desc, Database: *d, Counts: map[string]int{}, Sequences: map[string]int64{}}}
	if err := r.readAll(tables); err != nil {
		return nil, fmt.Errorf("%w %s (%s): %w", ErrRefused, desc, d, err)
	}
	return r.snap, nil
}

// readPgSequences records the last value given out by each table's id
// sequence (GORM's <table>_id_seq), as Sequences holds sqlite_sequence's,
// so that the conversion never reuses an id Headscale gave out and
// deleted. A sequence never used is left out.
func (r *reader) readPgSequences() error {
	rows, err := r.db.QueryContext(r.ctx, `SELECT sequencename, last_value FROM pg_sequences
WHERE schemaname = current_schema() AND last_value IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("reading the id sequences: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var last sql.NullInt64
		if err := rows.Scan(&name, &last); err != nil {
			return fmt.Errorf("reading the id sequences: %w", err)
		}
		if table, ok := strings.CutSuffix(name, "_id_seq"); ok && last.Valid {
			r.snap.Sequences[table] = last.Int64
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the id sequences: %w", err)
	}
	return nil
}
