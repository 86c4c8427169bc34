// Package hsdb recognises a database written by Headscale, the server this
// one replaces, and names the Headscale release that wrote it. Every
// Headscale release from 0.23 on records the schema migrations it applied
// in a table named migrations (one text id per row); the newest id present
// says which release last opened the database. Databases older than 0.23
// have Headscale's tables but no migrations table.
//
// The package only reads: Probe names the release of a file, Read checks
// a database (integrity, release, tables and columns) and reads every row
// into a Snapshot of plain values, tolerant of every form the releases
// stored. Converting a Snapshot into this server's schema is pkg/hsimport's
// job; the store uses Recognise to refuse a Headscale database it is asked
// to open directly.
package hsdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// migration is one of Headscale's schema migration ids and the release
// that first applied it.
type migration struct {
	id      string
	release string
}

// migrations lists every migration id of Headscale 0.23.0 through 0.29.2 in
// the order Headscale applies them (hscontrol/db/db.go of each release).
// Databases created by 0.28 or later hold only the ids from 202501221827 on.
var migrations = []migration{
	{"202312101416", "0.23.0"},
	{"202312101430", "0.23.0"},
	{"202402151347", "0.23.0"},
	{"2024041121742", "0.23.0"},
	{"202406021630", "0.23.0"},
	{"202409271400", "0.24.0"},
	{"202407191627", "0.24.0"},
	{"202408181235", "0.24.0"},
	{"202501221827", "0.24.1–0.24.2"},
	{"202501311657", "0.24.3–0.25.1"},
	{"202502070949", "0.24.3–0.25.1"},
	{"202502131714", "0.26.0–0.26.1"},
	{"202502171819", "0.26.0–0.26.1"},
	{"202505091439", "0.26.0–0.26.1"},
	{"202505141324", "0.26.0–0.26.1"},
	{"202507021200", "0.27.0"},
	{"202510311551", "0.27.1"},
	{"202511101554-drop-old-idx", "0.27.1"},
	{"202511011637-preauthkey-bcrypt", "0.28.0"},
	{"202511122344-remove-newline-index", "0.28.0"},
	{"202511131445-node-forced-tags-to-tags", "0.28.0"},
	{"202601121700-migrate-hostinfo-request-tags", "0.28.0"},
	{"202602201200-clear-tagged-node-user-id", "0.29.0"},
	{"202605221435-clear-zero-time-node-expiry", "0.29.0"},
	{"202606181200-recover-null-tags-node-user-id", "0.29.1–0.29.2"},
}

// Database describes a Headscale database.
type Database struct {
	// Release is the Headscale release (or range of releases with the
	// same schema) that wrote the database, "" when it is not one of
	// 0.23.0 through 0.29.2.
	Release string
	// Newest is the newest known migration id present.
	Newest string
	// Version is the exact version Headscale 0.29 and later record in
	// database_versions, "" when absent.
	Version string
	// Unknown lists migration ids no supported release applies: the
	// database was opened by a newer Headscale.
	Unknown []string
	// PreMigrations is set for a database with Headscale's tables but no
	// migrations table: Headscale older than 0.23.
	PreMigrations bool
}

// Supported reports whether the database comes from Headscale 0.23.0
// through 0.29.2.
func (d *Database) Supported() bool {
	return d.Release != "" && len(d.Unknown) == 0 && !d.PreMigrations
}

// String names what was found, for operators.
func (d *Database) String() string {
	switch {
	case d.PreMigrations:
		return "a Headscale database older than 0.23 (Headscale's tables without a migrations table)"
	case len(d.Unknown) > 0:
		return fmt.Sprintf("a Headscale database newer than 0.29.2 (migrations this server does not know: %s)", strings.Join(d.Unknown, ", "))
	case d.Release == "":
		return "a Headscale database with no migration this server knows"
	}
	s := "a Headscale " + d.Release + " database"
	if d.Version != "" {
		s += " (database_versions says " + d.Version + ")"
	}
	return s + " (newest migration " + d.Newest + ")"
}

// Queryer is what reading needs of a database: a *sql.DB, or a *sql.Tx for
// a consistent read.
type Queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Recognise reports whether the database behind db (SQLite or
// PostgreSQL), whose tables are named in tables, was written by Headscale.
// It returns nil and no error when it was not.
func Recognise(ctx context.Context, db Queryer, tables []string) (*Database, error) {
	has := func(name string) bool { return slices.Contains(tables, name) }
	if !has("migrations") {
		if has("machines") || has("namespaces") || (has("nodes") && has("users") && has("pre_auth_keys")) {
			return &Database{PreMigrations: true}, nil
		}
		return nil, nil
	}
	rows, err := db.QueryContext(ctx, `SELECT id FROM migrations`)
	if err != nil {
		return nil, fmt.Errorf("reading Headscale's migrations table: %w", err)
	}
	defer rows.Close()
	d := &Database{}
	newest := -1
	for rows.Next() {
		var id sql.NullString
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("reading Headscale's migrations table: %w", err)
		}
		i := slices.IndexFunc(migrations, func(m migration) bool { return m.id == id.String })
		if i < 0 {
			d.Unknown = append(d.Unknown, id.String)
			continue
		}
		newest = max(newest, i)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading Headscale's migrations table: %w", err)
	}
	if newest < 0 && len(d.Unknown) > 0 && !has("nodes") {
		return nil, nil // a migrations table of some other program
	}
	if newest >= 0 {
		d.Release, d.Newest = migrations[newest].release, migrations[newest].id
	}
	if has("database_versions") {
		err := db.QueryRowContext(ctx, `SELECT version FROM database_versions ORDER BY id LIMIT 1`).Scan(&d.Version)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("reading Headscale's database_versions table: %w", err)
		}
	}
	slices.Sort(d.Unknown)
	return d, nil
}

// VersionName is the Headscale version a copy of the database is named
// after: the exact version Headscale 0.29 recorded, else the newest
// release of the range that shares the database's schema (a database of
// the 0.24.3–0.25.1 range is named "v0.25.1").
func (d *Database) VersionName() string {
	if d.Version != "" {
		return "v" + strings.TrimPrefix(d.Version, "v")
	}
	r := d.Release
	if i := strings.LastIndex(r, "–"); i >= 0 {
		r = r[i+len("–"):]
	}
	if r == "" {
		return "unknown"
	}
	return "v" + r
}
