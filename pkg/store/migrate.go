package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// migrationFS holds the schema history. Files are named NNNN_name.sql,
// numbered from 1 without gaps, and are never edited once released: a schema
// change is a new file.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

// parseMigrationName splits "NNNN_name.sql" into its version and name.
func parseMigrationName(file string) (int, string, error) {
	base, ok := strings.CutSuffix(file, ".sql")
	if !ok {
		return 0, "", fmt.Errorf("migration file %q: name is not NNNN_name.sql", file)
	}
	num, name, ok := strings.Cut(base, "_")
	if !ok || num == "" || name == "" || strings.Trim(num, "0123456789") != "" {
		return 0, "", fmt.Errorf("migration file %q: name is not NNNN_name.sql", file)
	}
	v, err := strconv.Atoi(num)
	if err != nil {
		return 0, "", fmt.Errorf("migration file %q: version: %w", file, err)
	}
	return v, name, nil
}

// blockMarker matches the marker lines of engine blocks (see
// dialect.migration).
var blockMarker = regexp.MustCompile(`(?m)^-- \{\{(IF \w+|END)\}\}[ \t]*$`)

// checkEngineBlocks refuses engine blocks that name an unknown engine
// (they would silently run nowhere), nest, or are left open.
func checkEngineBlocks(body string) error {
	open := false
	for _, m := range blockMarker.FindAllStringSubmatch(body, -1) {
		switch engine, isIf := strings.CutPrefix(m[1], "IF "); {
		case isIf && open:
			return errors.New("engine blocks do not nest: {{IF}} inside another")
		case isIf && engine != sqliteDialect.name && engine != postgresDialect.name:
			return fmt.Errorf("engine block names %q: want %q or %q", engine, sqliteDialect.name, postgresDialect.name)
		case !isIf && !open:
			return errors.New("{{END}} without {{IF engine}}")
		}
		open = !open
	}
	if open {
		return errors.New("{{IF engine}} without {{END}}")
	}
	return nil
}

// migration is one parsed migration file.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads and orders the migrations in fsys (under
// "migrations/"), checking that versions are contiguous from 1.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		v, name, err := parseMigrationName(e.Name())
		if err != nil {
			return nil, err
		}
		body, err := fs.ReadFile(fsys, path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", e.Name(), err)
		}
		if err := checkEngineBlocks(string(body)); err != nil {
			return nil, fmt.Errorf("migration %q: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %04d_%s: expected version %d (versions must be contiguous from 1)", m.version, m.name, i+1)
		}
	}
	return ms, nil
}

// migrate brings the database up to the newest migration in fsys. Each
// migration runs in its own write transaction together with its
// schema_migrations row, and the current version is re-read inside that
// transaction, so two processes opening the same database cannot both
// apply it (SQLite's write lock; on PostgreSQL an advisory lock).
func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	ms, err := loadMigrations(fsys)
	if err != nil {
		return err
	}
	latest := 0
	if len(ms) > 0 {
		latest = ms[len(ms)-1].version
	}
	var current int
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := s.d.begin(ctx, tx, "migrate"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, qCreateMigrationsTable); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		if err := tx.QueryRowContext(ctx, qSchemaVersion).Scan(&current); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if current > latest {
		return fmt.Errorf("database schema version %d is newer than this headscale supports (%d): upgrade headscale or restore a backup", current, latest)
	}

	for _, m := range ms {
		if m.version <= current {
			continue
		}
		applied := false
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			// Re-read under the write lock: another process may have
			// applied this migration since the check above.
			if err := s.d.begin(ctx, tx, "migrate"); err != nil {
				return err
			}
			var v int
			if err := tx.QueryRowContext(ctx, qSchemaVersion).Scan(&v); err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			if v >= m.version {
				return nil
			}
			if _, err := tx.ExecContext(ctx, s.d.migration(m.sql)); err != nil {
				return fmt.Errorf("apply migration %04d_%s: %w", m.version, m.name, err)
			}
			if _, err := tx.ExecContext(ctx, qInsertMigration, m.version, m.name, time.Now().UnixMilli()); err != nil {
				return fmt.Errorf("record migration %04d_%s: %w", m.version, m.name, err)
			}
			applied = true
			return nil
		})
		if err != nil {
			return err
		}
		if applied {
			s.log.Info("applied schema migration", "version", m.version, "name", m.name)
		}
	}
	return nil
}

// migrateOrCheck runs migrate (with opts.migrations, or the embedded
// migrations), or with opts.NoMigrate only checks that the
// database is at the newest schema version this binary knows.
func (s *Store) migrateOrCheck(ctx context.Context, opts Options) error {
	fsys := opts.migrations
	if fsys == nil {
		fsys = migrationFS
	}
	if !opts.NoMigrate {
		return s.migrate(ctx, fsys)
	}
	ms, err := loadMigrations(fsys)
	if err != nil {
		return err
	}
	var v int
	if err := s.write.QueryRowContext(ctx, qSchemaVersion).Scan(&v); err != nil {
		return fmt.Errorf("read schema version (is this a database of this server?): %w", err)
	}
	if latest := ms[len(ms)-1].version; v != latest {
		return fmt.Errorf("database schema version %d, this headscale's is %d: use the headscale that runs the server on it", v, latest)
	}
	return nil
}
