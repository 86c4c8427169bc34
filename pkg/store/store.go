// Package store is the durable record of users, nodes, pre-auth keys, API
// keys and the ACL policy.
//
// The control server keeps live node state in memory and writes through to
// this package; it reads from it at start-up and for admin commands. Two
// engines keep it, with one schema, one set of migrations and one set of
// statements:
//
//   - SQLite (pure Go, via modernc.org/sqlite), opened as two pools: a
//     single-connection write pool whose transactions start with BEGIN
//     IMMEDIATE, so concurrent writers queue in Go instead of failing with
//     SQLITE_BUSY, and a read pool of query-only connections that WAL lets
//     run alongside the writer.
//   - PostgreSQL (github.com/jackc/pgx/v5 through database/sql), one pool
//     for reads and writes (Options.Postgres). Where SQLite's single writer
//     made a race impossible, the transaction takes a lock (a row lock, a
//     table lock, an advisory lock for migrations), and a transaction that
//     PostgreSQL aborts as a deadlock or serialization failure is run
//     again.
//
// The schema and queries are portable (BIGINT/TEXT/BOOLEAN columns, times
// as BIGINT unix milliseconds in UTC, hashes as hex TEXT, $n placeholders,
// INSERT ... RETURNING). What differs between the engines is in dialect.go;
// what only SQLite has (its files, journal modes, checkpoints, backups with
// VACUUM INTO, integrity_check, Import into a new file) is in sqlite.go,
// backup.go and import.go, and PostgreSQL's connection in postgres.go.
//
// For several servers on one PostgreSQL database (not switched on yet),
// Options.ChangeLog makes every write of nodes, users and the policy
// append records of what it changed to a change log in the same
// transaction, numbered gap-free in commit order (clog.go), and
// LoadSnapshot reads the state the log continues from (snapshot.go). Off,
// the default and always on SQLite, writes run as they did without it.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Sentinel errors callers test with errors.Is; the returned errors wrap them
// with context (what was looked up, which column conflicted).
var (
	// ErrNotFound reports that the addressed row does not exist (or that a
	// row referenced by a foreign key does not).
	ErrNotFound = errors.New("not found")
	// ErrConflict reports a unique-constraint violation or a delete that
	// would orphan dependent rows; the message names what conflicted.
	ErrConflict = errors.New("already exists")
	// ErrStorageFull reports that the disk (or quota) holding the database
	// is full: the write was not made, and writes succeed again once space
	// is freed.
	ErrStorageFull = errors.New("the database's disk is full")
	// ErrKeyUsed reports that a single-use pre-auth key had already been
	// consumed when a registration tried to use it.
	ErrKeyUsed = errors.New("pre-auth key already used")
	// ErrHeadscaleDatabase reports that the database was written by
	// Headscale; the message names the release. Nothing was changed.
	ErrHeadscaleDatabase = errors.New("the database was written by Headscale")
)

// Defaults applied by Open for zero-valued Options fields.
const (
	// DefaultCheckpointInterval is how often the WAL is truncated when
	// Options.CheckpointInterval is zero.
	DefaultCheckpointInterval = 5 * time.Minute
	// DefaultBusyTimeout is how long SQLite waits on a lock held by another
	// process when Options.BusyTimeout is zero.
	DefaultBusyTimeout = 10 * time.Second
)

// Options configures Open; it mirrors the database section of the server
// configuration.
type Options struct {
	// Path is the SQLite file. Its parent directory is created with mode
	// 0700 if missing and a new file is created with mode 0600; SQLite
	// gives the -wal and -shm files the database file's mode, and Open
	// restricts ones left with a looser mode to it.
	Path string
	// WAL selects journal_mode=WAL (the configured default); false selects
	// the rollback journal (journal_mode=DELETE).
	WAL bool
	// WALAutocheckpoint is PRAGMA wal_autocheckpoint in pages where
	// commits checkpoint (0 keeps SQLite's default); a negative value
	// turns automatic checkpoints off. A server's store (WAL with
	// CheckpointInterval on) does not checkpoint at commit whatever the
	// value, unless it is negative: it checkpoints in the background
	// within a second of a write.
	WALAutocheckpoint int
	// CheckpointInterval is the period of the background
	// wal_checkpoint(TRUNCATE) that bounds the -wal file; 0 means
	// DefaultCheckpointInterval and a negative value disables it.
	CheckpointInterval time.Duration
	// BusyTimeout is how long a statement waits for a lock held by another
	// process; 0 means DefaultBusyTimeout.
	BusyTimeout time.Duration
	// Postgres, when set, selects PostgreSQL: the store opens the database
	// it names, and Path and the SQLite settings above are not used.
	Postgres *PostgresOptions
	// NoMigrate opens the database as it is: no migration is applied, and
	// a database whose schema is not this binary's newest is refused.
	// Backups use it: they read a running server's database and must not
	// change it.
	NoMigrate bool
	// Logger receives the store's diagnostics; nil discards them.
	Logger *slog.Logger
	// Observe, if set, is told how long each operation took (metrics).
	Observe func(op string, d time.Duration)
	// ChangeLog, when set, makes every write of nodes, users and the
	// policy append its records to the change log (clog.go), for other
	// servers on the same database. PostgreSQL only; nil writes no log.
	ChangeLog *ChangeLogOptions

	// migrations replaces the embedded schema history (tests: a database
	// as an older release left it).
	migrations fs.FS
	// tracer sees every statement on PostgreSQL (tests count them).
	tracer pgx.QueryTracer
}

// Store is an open database. It is safe for concurrent use; Close releases
// it.
type Store struct {
	d     *dialect
	write *sql.DB // SQLite: one connection; every write goes through it
	read  *sql.DB // SQLite: query_only connections for reads (PostgreSQL: write)
	log   *slog.Logger
	path  string   // SQLite: the database file
	desc  string   // the database in messages: its path, or PostgreSQL's names without the password
	lock  *os.File // SQLite: shared flock held while open; see Restore
	obs   func(op string, d time.Duration)

	clog    *ChangeLogOptions // nil: writes append no change-log records
	channel string            // PostgreSQL: the change log's notification channel
	pgcfg   *pgx.ConnConfig   // PostgreSQL: how the pool connects (DialListener)

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if necessary) the database at opts.Path, applies the
// connection pragmas, runs any pending migrations and starts the periodic
// WAL checkpoint. It refuses files that are not SQLite databases and
// databases written by a newer schema than this binary knows. With
// opts.Postgres set it opens that PostgreSQL database instead (see
// PostgresOptions), with the same migrations and refusals.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Postgres != nil {
		return openPostgres(ctx, opts)
	}
	if opts.Path == "" {
		return nil, errors.New("open store: database path is empty")
	}
	if opts.ChangeLog != nil {
		return nil, errors.New("open store: the change log (several servers on one database) needs PostgreSQL")
	}
	if opts.BusyTimeout == 0 {
		opts.BusyTimeout = DefaultBusyTimeout
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	path, err := prepareFile(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", opts.Path, err)
	}

	lock, err := lockShared(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := checkForeignDatabase(ctx, path, opts); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	write, err := openWritePool(ctx, path, opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{d: sqliteDialect, write: write, log: log, path: path, desc: path, lock: lock, obs: opts.Observe}

	if err := s.migrateOrCheck(ctx, opts); err != nil {
		_ = write.Close()
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}

	s.read, err = openReadPool(ctx, path, opts)
	if err != nil {
		_ = write.Close()
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}

	if err := tightenSidecars(path); err != nil {
		log.Warn("cannot restrict the -wal and -shm files to the database file's mode", "path", path, "err", err)
	}

	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	if opts.WAL && opts.CheckpointInterval > 0 {
		s.wg.Add(1)
		go s.checkpointLoop(bg, opts.CheckpointInterval)
	}
	if backgroundCheckpoints(opts) {
		s.wg.Add(1)
		go s.walLoop(bg)
	}

	log.Info("store opened", "path", path, "wal", opts.WAL)
	return s, nil
}

// Close stops the checkpoint goroutine and closes both pools. Calling it
// again returns the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.wg.Wait()
		var rerr error
		if s.read != s.write {
			rerr = s.read.Close()
		}
		werr := s.write.Close()
		// Only after SQLite closed its descriptors: closing any descriptor of
		// the file drops this process's fcntl locks.
		if s.lock != nil {
			s.lock.Close()
		}
		if err := errors.Join(rerr, werr); err != nil {
			s.closeErr = fmt.Errorf("close store %s: %w", s.desc, err)
		}
	})
	return s.closeErr
}

// Ping runs a real query so that /health notices a database that can no
// longer be read, not just a pool that exists.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.read.QueryRowContext(ctx, qPing).Scan(&one); err != nil {
		return fmt.Errorf("ping store: %w", err)
	}
	return nil
}

// SchemaVersion reports the newest applied migration, for diagnostics and
// the admin "version" output.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	defer s.observe("schema_version", time.Now())
	var v int
	if err := s.read.QueryRowContext(ctx, qSchemaVersion).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// checkpointLoop truncates the WAL every interval until ctx is cancelled by
// Close.
func (s *Store) checkpointLoop(ctx context.Context, interval time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Checkpoint(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("periodic wal checkpoint failed", "err", err)
			}
		}
	}
}

// maxTxAttempts bounds how often writeTx runs a transaction that
// PostgreSQL aborted as a deadlock or serialization failure.
const maxTxAttempts = 5

// writeTx runs fn in a write transaction (on SQLite BEGIN IMMEDIATE on the
// single write connection), committing if fn returns nil. On PostgreSQL a
// transaction aborted as a deadlock or serialization failure is run again
// (fn must be safe to run more than once), up to maxTxAttempts times.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.writeTxOnce(ctx, fn)
		if err == nil || attempt == maxTxAttempts || !s.d.retryable(err) || ctx.Err() != nil {
			return err
		}
		s.log.Debug("transaction aborted by the database, running it again", "attempt", attempt, "err", err)
	}
}

// writeTxOnce is one attempt of writeTx.
func (s *Store) writeTxOnce(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", mapErr(err))
	}
	if err := fn(tx); err != nil {
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) && !isFull(rerr) {
			s.log.Warn("rollback failed", "err", rerr)
		}
		if isFull(err) {
			err = mapErr(err)
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", mapErr(err))
	}
	return nil
}

// execOne runs a single-row write and reports ErrNotFound when it touched no
// row.
func (s *Store) execOne(ctx context.Context, query string, args ...any) error {
	return execOne(ctx, s.write, query, args...)
}

// execOne is Store.execOne on q (a pool or a transaction).
func execOne(ctx context.Context, q dbtx, query string, args ...any) error {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return mapErr(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("rows affected: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// observe reports an operation's duration to Options.Observe.
func (s *Store) observe(op string, start time.Time) {
	if s.obs != nil {
		s.obs(op, time.Since(start))
	}
}

// Pools returns the connection pools by name for pool statistics: "write"
// and "read" on SQLite, "postgres" (the one pool) on PostgreSQL.
func (s *Store) Pools() map[string]*sql.DB {
	if s.read == s.write {
		return map[string]*sql.DB{s.d.name: s.write}
	}
	return map[string]*sql.DB{"write": s.write, "read": s.read}
}

// Engine reports the database engine: "sqlite" or "postgres".
func (s *Store) Engine() string { return s.d.name }
