package store

// Everything specific to SQLite: file preparation, DSNs and pragmas,
// refusing foreign databases, checkpointing and SQLite's error codes. Its
// dialect and error translation are in dialect.go.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/hsdb"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// errNotADatabase is returned for an existing file that is not a SQLite
// database, so that a mistyped path never gets overwritten.
var errNotADatabase = errors.New("not a SQLite database (refusing to use it)")

// sqliteMagic starts every SQLite 3 database file.
const sqliteMagic = "SQLite format 3\x00"

const (
	pragmaCheckpointTruncate = `PRAGMA wal_checkpoint(TRUNCATE)`
	pragmaCheckpointPassive  = `PRAGMA wal_checkpoint(PASSIVE)`
	pragmaJournalMode        = `PRAGMA journal_mode`
	// qUserTables lists tables that are not SQLite's own bookkeeping.
	qUserTables = `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`
)

// prepareFile makes the parent directory (0700) and an empty database file
// (0600) if they are missing, so SQLite never creates them with the umask's
// looser modes, and refuses an existing file that is not a SQLite database.
// It returns the absolute path.
func prepareFile(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve path: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return "", fmt.Errorf("create database directory: %w", err)
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("open database file: %w", err)
	}
	defer f.Close()

	header := make([]byte, len(sqliteMagic))
	_, err = io.ReadFull(f, header)
	switch {
	case errors.Is(err, io.EOF):
		return abs, nil // new or empty file: SQLite initialises it
	case errors.Is(err, io.ErrUnexpectedEOF) || (err == nil && string(header) != sqliteMagic):
		return "", errNotADatabase
	case err != nil:
		return "", fmt.Errorf("read database header: %w", err)
	}
	return abs, nil
}

// tightenSidecars gives the -wal and -shm files no permission the database
// file lacks. SQLite creates them with the database file's mode, but it
// corrects only files it finds empty; ones left by an earlier run under
// another umask keep theirs. A file that cannot be changed is reported.
func tightenSidecars(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	want := fi.Mode().Perm()
	var errs []error
	for _, suffix := range []string{"-wal", "-shm"} {
		si, err := os.Stat(path + suffix)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil && si.Mode().Perm()&^want != 0 {
			err = os.Chmod(path+suffix, si.Mode().Perm()&want)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dsn builds a modernc.org/sqlite URI for path with the given pragmas.
func dsn(path string, pragmas []string, extra url.Values) string {
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	u := url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}
	// url.URL renders "file:///abs"; SQLite accepts that form.
	return u.String()
}

// commonPragmas apply to every connection in both pools.
func commonPragmas(opts Options) []string {
	return []string{
		"busy_timeout(" + strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10) + ")",
		"foreign_keys(1)",
	}
}

// openWritePool opens the single-connection pool every write goes through.
// Its transactions begin IMMEDIATE, so the write lock is taken up front and a
// transaction never has to upgrade a read lock (the usual SQLITE_BUSY trap).
func openWritePool(ctx context.Context, path string, opts Options) (*sql.DB, error) {
	pragmas := commonPragmas(opts)
	if opts.WAL {
		pragmas = append(pragmas, "journal_mode(WAL)")
	} else {
		pragmas = append(pragmas, "journal_mode(DELETE)")
	}
	pragmas = append(pragmas, "synchronous(NORMAL)")
	switch {
	case backgroundCheckpoints(opts):
		// A checkpoint run by a commit reports its own failure (a full
		// disk) as the commit's, although the commit happened: a write
		// refused to its client would then be in the database. The
		// store's walLoop checkpoints instead.
		pragmas = append(pragmas, "wal_autocheckpoint(0)")
	case opts.WALAutocheckpoint != 0:
		pragmas = append(pragmas, "wal_autocheckpoint("+strconv.Itoa(opts.WALAutocheckpoint)+")")
	}
	db, err := sql.Open("sqlite", dsn(path, pragmas, url.Values{"_txlock": {"immediate"}}))
	if err != nil {
		return nil, fmt.Errorf("open write pool: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)

	// The first connection runs the pragmas; on a file that is not a
	// database this is where SQLite notices.
	var mode string
	if err := db.QueryRowContext(ctx, pragmaJournalMode).Scan(&mode); err != nil {
		_ = db.Close()
		if isNotADB(err) {
			return nil, fmt.Errorf("%w: %w", errNotADatabase, err)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	if opts.WAL && !strings.EqualFold(mode, "wal") {
		_ = db.Close()
		return nil, fmt.Errorf("enable WAL: journal mode is %q (filesystem without shared-memory support?)", mode)
	}
	return db, nil
}

// openReadPool opens the pool used for reads. Its connections are
// query_only, so a write accidentally sent there fails loudly instead of
// racing the write pool for the lock.
func openReadPool(ctx context.Context, path string, opts Options) (*sql.DB, error) {
	pragmas := append(commonPragmas(opts), "query_only(1)")
	db, err := sql.Open("sqlite", dsn(path, pragmas, nil))
	if err != nil {
		return nil, fmt.Errorf("open read pool: %w", err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(4)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect read pool: %w", err)
	}
	return db, nil
}

// checkForeignDatabase refuses a SQLite database that has tables but no
// schema_migrations table: it belongs to something else (a Headscale
// database, named with its release by hsdb, or another program's), and
// running our migrations on it would fail half-way or, worse, succeed.
//
// It runs on a connection of its own, opened before the write pool sets
// the journal mode, so a database it refuses is left byte for byte as it
// was. A file that is not a database passes here and is reported by the
// write pool.
func checkForeignDatabase(ctx context.Context, path string, opts Options) error {
	db, err := sql.Open("sqlite", dsn(path, commonPragmas(opts), nil))
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, qUserTables)
	if isNotADB(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("list tables: %w", err)
		}
		if name == "schema_migrations" {
			return nil
		}
		tables = append(tables, name)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	if len(tables) == 0 {
		return nil
	}
	hs, err := hsdb.Recognise(ctx, db, tables)
	if err != nil {
		return err
	}
	if hs != nil {
		return fmt.Errorf("%w: this is %s; it was left unchanged: the server converts a Headscale database when it starts (headscale serve), or run headscale db import-headscale (docs/runbook.md, \"Switching from Headscale\")", ErrHeadscaleDatabase, hs)
	}
	return fmt.Errorf("database has tables (%s) but no schema_migrations table: it was not created by this headscale", strings.Join(tables, ", "))
}

// backgroundCheckpoints reports whether the store checkpoints the WAL
// from walLoop rather than from commits: a server's store (with the
// periodic truncation on) in WAL mode, unless wal_autocheckpoint is
// negative (off, as in SQLite).
func backgroundCheckpoints(opts Options) bool {
	return opts.WAL && opts.CheckpointInterval > 0 && opts.WALAutocheckpoint >= 0
}

// walPoll is how often walLoop looks at the -wal file.
const walPoll = time.Second

// walLoop folds the WAL back into the database file (a passive
// checkpoint) within walPoll of a write, in place of SQLite's automatic
// checkpoint at commit. A checkpoint that fails is logged once per
// failing streak and tried again at the next write.
func (s *Store) walLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(walPoll)
	defer t.Stop()
	var seen time.Time
	var failing bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(s.path + "-wal")
		if err != nil || fi.ModTime().Equal(seen) {
			continue
		}
		var busy, logFrames, done int
		err = s.write.QueryRowContext(ctx, pragmaCheckpointPassive).Scan(&busy, &logFrames, &done)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				s.log.Warn("wal checkpoint failed; the -wal file grows until one succeeds", "err", mapErr(err))
			}
			failing = true
		case err == nil:
			if failing {
				s.log.Info("wal checkpoint succeeded again")
			}
			failing = false
			seen = fi.ModTime()
		}
	}
}

// Checkpoint copies the WAL into the database file and truncates the -wal
// file to zero bytes now; on PostgreSQL it does nothing. It fails if readers or another process kept it
// from completing within the busy timeout.
func (s *Store) Checkpoint(ctx context.Context) error {
	if s.d != sqliteDialect {
		return nil // PostgreSQL checkpoints by itself
	}
	defer s.observe("checkpoint", time.Now())
	var busy, logFrames, checkpointed int
	if err := s.write.QueryRowContext(ctx, pragmaCheckpointTruncate).Scan(&busy, &logFrames, &checkpointed); err != nil {
		return fmt.Errorf("wal checkpoint: %w", err)
	}
	if busy != 0 {
		return fmt.Errorf("wal checkpoint: incomplete, database busy (%d of %d frames checkpointed)", checkpointed, logFrames)
	}
	s.log.Debug("wal checkpoint", "log_frames", logFrames, "checkpointed_frames", checkpointed)
	return nil
}

// sqliteCode returns the (extended) SQLite result code carried by err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// isNotADB reports SQLITE_NOTADB ("file is not a database").
func isNotADB(err error) bool {
	return sqliteCode(err)&0xff == sqlite3.SQLITE_NOTADB
}

// isFull reports SQLITE_FULL ("database or disk is full").
func isFull(err error) bool {
	return sqliteCode(err)&0xff == sqlite3.SQLITE_FULL
}
