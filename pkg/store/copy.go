package store

// Copying a whole database from one store into another, either engine to
// either engine: `headscale db migrate`, backups of a PostgreSQL database
// (into a new SQLite file) and restores into one.
//
// The source is read in one snapshot (SQLite: one read transaction;
// PostgreSQL: REPEATABLE READ READ ONLY), row by row with every column, so a
// column added by a later migration is copied without code here. The target
// is written in one transaction: rows with their IDs, then the ID
// sequences raised, then every table read back in the same transaction and
// compared with the snapshot (row count and a checksum over a canonical
// encoding of each row). Only when all match is it committed; a refusal,
// an error or a mismatch leaves the target's rows as they were.

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// copyTables are the tables Copy moves, in the order references allow.
// Every table of the schema except schema_migrations (each database keeps
// its own) and runtimeTables (the servers running on it) must be listed:
// Copy refuses a source holding any other table, and TestCopyCoversSchema
// fails when a migration adds one.
var copyTables = importTables

// Errors Copy returns (wrapped with what it found).
var (
	// ErrTargetNotEmpty reports that the target holds rows and
	// CopyOptions.Force was not set; nothing was written.
	ErrTargetNotEmpty = errors.New("the target database is not empty")
	// ErrCopyMismatch reports that the rows written differ from the
	// source's snapshot; the target's transaction was rolled back.
	ErrCopyMismatch = errors.New("the copy does not match its source")
)

// CopyOptions tune Copy.
type CopyOptions struct {
	// Force lets Copy write into a target that holds rows: every row of
	// every copied table is deleted first, in the same transaction as the
	// copy (so a failed copy leaves them as they were). ID sequences never
	// go down.
	Force bool

	// tamper, set by tests only, changes the target inside the copy's
	// transaction just before the verification pass.
	tamper func(ctx context.Context, tx *sql.Tx) error
}

// TableCopy is what Copy found for one table: the rows in the source's
// snapshot and their checksum, which the target matched.
type TableCopy struct {
	// Table is the table's name.
	Table string
	// Rows is the number of rows copied.
	Rows int
	// Checksum is the SHA-256 (hex) of the table's rows in a canonical
	// encoding that is the same on both engines.
	Checksum string
}

// CopyResult is what Copy copied and verified.
type CopyResult struct {
	// Tables lists every copied table, in copy order.
	Tables []TableCopy
	// Rows is the total number of rows.
	Rows int
	// SchemaVersion is the schema version of source and target.
	SchemaVersion int
}

// tableSnap is one table read from a snapshot.
type tableSnap struct {
	name string
	cols []string
	rows [][]any
	sum  string
}

// snapshot is every copied table of a database at one moment.
type snapshot struct {
	version int
	tables  []tableSnap
	seqs    map[string]int64
}

// Copy copies every row of src into dst (stores on either engine, opened
// with Open or OpenIdle) and verifies the copy; see the top of this file.
// Both must be at the same schema version (Open brings both to this
// binary's). dst must hold no rows unless opts.Force is set.
func Copy(ctx context.Context, src, dst *Store, opts CopyOptions) (CopyResult, error) {
	snap, err := src.snapshot(ctx)
	if err != nil {
		return CopyResult{}, fmt.Errorf("copy: read %s: %w", src.desc, err)
	}
	res := CopyResult{SchemaVersion: snap.version}
	for _, t := range snap.tables {
		res.Tables = append(res.Tables, TableCopy{Table: t.name, Rows: len(t.rows), Checksum: t.sum})
		res.Rows += len(t.rows)
	}
	err = dst.writeTx(ctx, func(tx *sql.Tx) error { return dst.writeSnapshot(ctx, tx, snap, opts) })
	if err != nil {
		return CopyResult{}, fmt.Errorf("copy into %s: %w", dst.desc, err)
	}
	return res, nil
}

// snapshot reads every copied table, the schema version and the ID
// sequences in one read-only transaction.
func (s *Store) snapshot(ctx context.Context) (*snapshot, error) {
	var txo *sql.TxOptions
	if s.d == postgresDialect {
		txo = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := s.read.BeginTx(ctx, txo)
	if err != nil {
		return nil, fmt.Errorf("begin snapshot: %w", mapErr(err))
	}
	defer tx.Rollback()
	snap := &snapshot{seqs: map[string]int64{}}
	// On SQLite the snapshot starts with the first read: this one.
	if err := tx.QueryRowContext(ctx, qSchemaVersion).Scan(&snap.version); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	tables, err := s.schemaTables(ctx, tx)
	if err != nil {
		return nil, err
	}
	for _, t := range tables {
		if t != "schema_migrations" && !slices.Contains(copyTables, t) && !slices.Contains(runtimeTables, t) {
			return nil, fmt.Errorf("table %s is not one this headscale copies (a newer schema, or a table added by hand)", t)
		}
	}
	for _, t := range copyTables {
		ts, err := readTable(ctx, tx, t)
		if err != nil {
			return nil, err
		}
		snap.tables = append(snap.tables, ts)
		seq, err := s.sequence(ctx, tx, t)
		if err != nil {
			return nil, fmt.Errorf("sequence of %s: %w", t, err)
		}
		snap.seqs[t] = seq
	}
	return snap, nil
}

// schemaTables lists the database's own tables.
func (s *Store) schemaTables(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}) ([]string, error) {
	query := qUserTables
	if s.d == postgresDialect {
		query = qPgTables
	}
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("list tables: %w", err)
		}
		tables = append(tables, name)
	}
	return tables, rows.Err()
}

// sequence returns the largest ID table's sequence has handed out (0 for
// none).
func (s *Store) sequence(ctx context.Context, tx *sql.Tx, table string) (int64, error) {
	q := `SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = $1`
	if s.d == postgresDialect {
		q = `SELECT COALESCE(pg_sequence_last_value(CAST(pg_get_serial_sequence($1, 'id') AS regclass)), 0)`
	}
	var v int64
	if err := tx.QueryRowContext(ctx, q, table).Scan(&v); err != nil {
		return 0, mapErr(err)
	}
	return v, nil
}

// readTable reads every row of table (name from copyTables, never input)
// in ID order, each value in its canonical Go type (nil, int64, bool or
// string), and computes the table's checksum.
func readTable(ctx context.Context, tx *sql.Tx, table string) (tableSnap, error) {
	ts := tableSnap{name: table}
	rows, err := tx.QueryContext(ctx, `SELECT * FROM `+table+` ORDER BY id`)
	if err != nil {
		return ts, fmt.Errorf("read %s: %w", table, err)
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return ts, fmt.Errorf("read %s: %w", table, err)
	}
	isBool := make([]bool, len(types))
	for i, ct := range types {
		ts.cols = append(ts.cols, ct.Name())
		switch strings.ToUpper(ct.DatabaseTypeName()) {
		case "BOOL", "BOOLEAN":
			isBool[i] = true
		}
	}
	sum := newRowHash(ts.cols)
	for rows.Next() {
		vals := make([]any, len(types))
		ptrs := make([]any, len(types))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return ts, fmt.Errorf("read %s: %w", table, err)
		}
		for i, v := range vals {
			c, err := canonical(v, isBool[i])
			if err != nil {
				return ts, fmt.Errorf("read %s.%s: %w", table, ts.cols[i], err)
			}
			vals[i] = c
		}
		sum.add(vals)
		ts.rows = append(ts.rows, vals)
	}
	if err := rows.Err(); err != nil {
		return ts, fmt.Errorf("read %s: %w", table, err)
	}
	ts.sum = sum.sum()
	return ts, nil
}

// canonical maps a value as either driver returns it to one Go type per
// kind: NULL to nil, integers to int64, booleans (SQLite keeps them as 0
// and 1) to bool, text and bytes to string.
func canonical(v any, isBool bool) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case bool:
		return x, nil
	case int64:
		if isBool {
			return x != 0, nil
		}
		return x, nil
	case int32:
		return canonical(int64(x), isBool)
	case int:
		return canonical(int64(x), isBool)
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	}
	return nil, fmt.Errorf("unexpected value of type %T", v)
}

// rowHash is the checksum of a table: SHA-256 over each row's columns in
// name order, each written as name, a type tag and the length-prefixed
// value, so the same rows give the same sum on either engine.
type rowHash struct {
	h     hash.Hash
	order []int // column indexes in name order
	names []string
}

func newRowHash(cols []string) *rowHash {
	r := &rowHash{h: sha256.New(), names: cols}
	for i := range cols {
		r.order = append(r.order, i)
	}
	sort.Slice(r.order, func(a, b int) bool { return cols[r.order[a]] < cols[r.order[b]] })
	return r
}

func (r *rowHash) add(vals []any) {
	var b []byte
	for _, i := range r.order {
		b = append(b, r.names[i]...)
		b = append(b, '=')
		switch x := vals[i].(type) {
		case nil:
			b = append(b, 'N')
		case bool:
			if x {
				b = append(b, 'T')
			} else {
				b = append(b, 'F')
			}
		case int64:
			b = append(b, 'I')
			b = strconv.AppendInt(b, x, 10)
		case string:
			b = append(b, 'S')
			b = strconv.AppendInt(b, int64(len(x)), 10)
			b = append(b, ':')
			b = append(b, x...)
		}
		b = append(b, ';')
	}
	b = append(b, '\n')
	r.h.Write(b)
}

func (r *rowHash) sum() string { return hex.EncodeToString(r.h.Sum(nil)) }

// writeSnapshot is Copy's transaction on the target.
func (s *Store) writeSnapshot(ctx context.Context, tx *sql.Tx, snap *snapshot, opts CopyOptions) error {
	var version int
	if err := tx.QueryRowContext(ctx, qSchemaVersion).Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version != snap.version {
		return fmt.Errorf("the target has schema version %d, the source %d (open both with the same headscale)", version, snap.version)
	}
	var held []string
	for _, t := range copyTables {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&n); err != nil {
			return fmt.Errorf("count %s: %w", t, err)
		}
		if n > 0 {
			held = append(held, fmt.Sprintf("%s: %d rows", t, n))
		}
	}
	if len(held) > 0 {
		if !opts.Force {
			return fmt.Errorf("%w (%s); nothing was written (--force empties it first, in the same transaction)", ErrTargetNotEmpty, strings.Join(held, ", "))
		}
		for i := len(copyTables) - 1; i >= 0; i-- {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+copyTables[i]); err != nil {
				return fmt.Errorf("empty %s: %w", copyTables[i], mapErr(err))
			}
		}
	}
	for _, t := range snap.tables {
		if err := insertRows(ctx, tx, t); err != nil {
			return err
		}
		if err := s.d.raiseSequence(ctx, tx, t.name, snap.seqs[t.name]); err != nil {
			return fmt.Errorf("sequence of %s: %w", t.name, err)
		}
	}
	if opts.tamper != nil {
		if err := opts.tamper(ctx, tx); err != nil {
			return err
		}
	}
	var bad []string
	for _, want := range snap.tables {
		got, err := readTable(ctx, tx, want.name)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if len(got.rows) != len(want.rows) || got.sum != want.sum {
			bad = append(bad, fmt.Sprintf("%s: %d rows checksum %.16s, source %d rows checksum %.16s",
				want.name, len(got.rows), got.sum, len(want.rows), want.sum))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w (%s); the target was left as it was", ErrCopyMismatch, strings.Join(bad, "; "))
	}
	return nil
}

// insertRows writes t's rows with their IDs through one prepared statement.
func insertRows(ctx context.Context, tx *sql.Tx, t tableSnap) error {
	if len(t.rows) == 0 {
		return nil
	}
	ph := make([]string, len(t.cols))
	for i := range ph {
		ph[i] = "$" + strconv.Itoa(i+1)
	}
	st, err := tx.PrepareContext(ctx, `INSERT INTO `+t.name+` (`+strings.Join(t.cols, ", ")+`) VALUES (`+strings.Join(ph, ", ")+`)`)
	if err != nil {
		return fmt.Errorf("write %s: %w", t.name, mapErr(err))
	}
	defer st.Close()
	for _, r := range t.rows {
		if _, err := st.ExecContext(ctx, r...); err != nil {
			return fmt.Errorf("write %s row %v: %w", t.name, r[slices.Index(t.cols, "id")], mapErr(err))
		}
	}
	return nil
}

// OpenIdle opens the database opts names for a command that must be its
// only writer (db migrate, restore into PostgreSQL), refusing with ErrInUse
// while a server uses it:
//
//   - SQLite: every open Store holds a shared flock on the file, so an
//     exclusive one that cannot be taken means a server (or another
//     command) has it open. The probe is released before the store opens
//     it, so a server started in between is not seen.
//   - PostgreSQL: a server's connections carry application_name
//     "headscale" (see PostgresOptions.ApplicationName); any such session
//     on the same database refuses. A server of an older release, or one
//     whose connections go through a pooler that rewrites the name, is not
//     seen.
func OpenIdle(ctx context.Context, opts Options) (*Store, error) {
	if opts.Postgres == nil {
		if err := probeIdle(opts.Path); err != nil {
			return nil, err
		}
		return Open(ctx, opts)
	}
	pgo := *opts.Postgres
	if pgo.ApplicationName == "" {
		pgo.ApplicationName = AdminApplicationName
	}
	opts.Postgres = &pgo
	s, err := Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()`, ServerApplicationName).Scan(&n); err != nil {
		s.Close()
		return nil, fmt.Errorf("%s: look for a running server: %w", s.desc, err)
	}
	if n > 0 {
		s.Close()
		return nil, fmt.Errorf("%s: %d connection(s) of a running headscale (application_name %q): %w", s.desc, n, ServerApplicationName, ErrInUse)
	}
	return s, nil
}

// probeIdle fails with ErrInUse while a Store has the SQLite file at path
// open (a missing file is idle).
func probeIdle(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", path, ErrInUse)
		}
		return fmt.Errorf("lock %s: %w", path, err)
	}
	return nil // closing f releases the lock
}

// Describe names the store's database for messages: the SQLite file's
// path or PostgreSQL's host, port, database and user (never a password).
func (s *Store) Describe() string { return s.desc }

// FileOptions are the options for opening the SQLite file at path as an
// admin command does: in the journal mode the file is already in (WAL for
// a new file, the server's default), without the periodic checkpoint.
func FileOptions(path string) Options {
	wal := true
	if f, err := os.Open(path); err == nil {
		// Bytes 18 and 19 of the header are 2 in WAL mode, 1 otherwise.
		h := make([]byte, 20)
		if n, _ := f.Read(h); n == 20 && string(h[:len(sqliteMagic)]) == sqliteMagic {
			wal = h[18] == 2
		}
		f.Close()
	}
	return Options{Path: path, WAL: wal, CheckpointInterval: -1}
}
