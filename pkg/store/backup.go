package store

// Online snapshots and restores of a SQLite database file. Both work on the
// file, not on an open Store, so the CLI can run them in its own process
// beside (backup) or instead of (restore) a running server.

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
	"syscall"
	"time"
)

// BackupResult describes a snapshot that Backup wrote and verified.
type BackupResult struct {
	// Path is the absolute path of the snapshot.
	Path string
	// Bytes is its size.
	Bytes int64
	// SchemaVersion is the newest migration the snapshot carries.
	SchemaVersion int
}

// backupTarget resolves a backup's output path dst, refuses one that
// exists, and creates beside it the temporary file the backup is written
// to (renamed to dst once verified). It returns both paths.
func backupTarget(dst string) (string, string, error) {
	dst, err := filepath.Abs(dst)
	if err != nil {
		return "", "", fmt.Errorf("backup: resolve output path: %w", err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return "", "", fmt.Errorf("backup: %s already exists (refusing to overwrite)", dst)
	}
	tmp, err := createTemp(filepath.Dir(dst), filepath.Base(dst))
	if err != nil {
		return "", "", fmt.Errorf("backup: %w", err)
	}
	return dst, tmp, nil
}

// Backup writes a consistent snapshot of the SQLite database at src to the
// new file dst with VACUUM INTO, which only needs a read transaction, so a
// running server keeps serving. The snapshot is written under a temporary
// name with mode 0600, checked with PRAGMA integrity_check, synced and only
// then renamed to dst; a failure leaves nothing behind. dst must not exist.
func Backup(ctx context.Context, src, dst string) (BackupResult, error) {
	src, err := existingDatabase(src)
	if err != nil {
		return BackupResult{}, err
	}
	dst, tmp, err := backupTarget(dst)
	if err != nil {
		return BackupResult{}, err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()

	db, err := sql.Open("sqlite", dsn(src, []string{"busy_timeout(" + strconv.Itoa(int(DefaultBusyTimeout.Milliseconds())) + ")"}, url.Values{"mode": {"rw"}}))
	if err != nil {
		return BackupResult{}, fmt.Errorf("backup: open %s: %w", src, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `VACUUM INTO $1`, tmp); err != nil {
		return BackupResult{}, fmt.Errorf("backup: snapshot of %s: %w", src, err)
	}
	res, err := finishBackup(ctx, tmp, dst)
	ok = err == nil
	return res, err
}

// RestoreResult describes what Restore did.
type RestoreResult struct {
	// Database is the path that now holds the restored data.
	Database string
	// Aside is where the database that was replaced now lives, or "" when
	// there was none.
	Aside string
	// SchemaVersion is the newest migration the restored data carries.
	SchemaVersion int
}

// ErrInUse is returned by Restore while a server has the database open.
var ErrInUse = errors.New("the database is in use by a running headscale; stop it first (systemctl stop headscale)")

// checkBackup checks that src is a backup this binary can restore: an
// existing SQLite database that passes verifySnapshot, with a schema no
// newer than this binary's. It returns src's path and schema version.
func checkBackup(ctx context.Context, src string) (string, int, error) {
	src, err := existingDatabase(src)
	if err != nil {
		return "", 0, fmt.Errorf("restore: %w", err)
	}
	version, err := verifySnapshot(ctx, src)
	if err != nil {
		return "", 0, fmt.Errorf("restore: %s is not a usable backup: %w", src, err)
	}
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		return "", 0, err
	}
	if latest := ms[len(ms)-1].version; version > latest {
		return "", 0, fmt.Errorf("restore: %s has schema version %d, newer than this headscale supports (%d)", src, version, latest)
	}
	return src, version, nil
}

// Restore replaces the database at dbPath with the snapshot at src. It
// refuses while a Store has dbPath open (Open holds a shared flock on the
// file), checks the snapshot's integrity and schema version first, and
// keeps the current database (with any -wal and -shm files) beside it as
// <name>.pre-restore-<time> instead of deleting it. When run as root the
// restored file gets the owner of the database it replaces, so the service
// user can still open it.
func Restore(ctx context.Context, src, dbPath string) (RestoreResult, error) {
	src, version, err := checkBackup(ctx, src)
	if err != nil {
		return RestoreResult{}, err
	}
	dbPath, err = filepath.Abs(dbPath)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	res := RestoreResult{Database: dbPath, SchemaVersion: version}

	uid, gid := -1, -1
	if cur, err := os.Open(dbPath); err == nil {
		defer cur.Close()
		if err := syscall.Flock(int(cur.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return RestoreResult{}, fmt.Errorf("restore: %s: %w", dbPath, ErrInUse)
			}
			return RestoreResult{}, fmt.Errorf("restore: lock %s: %w", dbPath, err)
		}
		if fi, err := cur.Stat(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				uid, gid = int(st.Uid), int(st.Gid)
			}
		}
		res.Aside = dbPath + ".pre-restore-" + time.Now().UTC().Format("20060102T150405Z")
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Rename(dbPath+suffix, res.Aside+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return RestoreResult{}, fmt.Errorf("restore: keeping the current database aside: %w", err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}

	tmp, err := createTemp(filepath.Dir(dbPath), filepath.Base(dbPath))
	if err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	if err := copyInto(tmp, src); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("restore: %w", err)
	}
	if uid >= 0 && os.Geteuid() == 0 {
		if err := os.Chown(tmp, uid, gid); err != nil {
			os.Remove(tmp)
			return res, fmt.Errorf("restore: %w", err)
		}
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("restore: %w", err)
	}
	syncDir(filepath.Dir(dbPath))
	return res, nil
}

// lockShared takes the shared flock that marks a database as in use, so
// Restore refuses to replace it under a running server. The lock is
// advisory and independent of SQLite's own fcntl locks.
func lockShared(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errors.New("the database is being restored; try again when the restore has finished")
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}

// existingDatabase returns the absolute path of an existing SQLite file.
func existingDatabase(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	f, err := os.Open(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("no database at %s", abs)
		}
		return "", err
	}
	defer f.Close()
	header := make([]byte, len(sqliteMagic))
	if _, err := io.ReadFull(f, header); err != nil || string(header) != sqliteMagic {
		return "", fmt.Errorf("%s: %w", abs, errNotADatabase)
	}
	return abs, nil
}

// verifySnapshot runs integrity_check on a database file that nothing else
// uses and returns its schema version.
func verifySnapshot(ctx context.Context, path string) (int, error) {
	db, err := sql.Open("sqlite", dsn(path, nil, url.Values{"mode": {"ro"}}))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var result string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&result); err != nil {
		return 0, fmt.Errorf("integrity_check: %w", err)
	}
	if result != "ok" {
		return 0, fmt.Errorf("integrity_check: %s", result)
	}
	var version int
	if err := db.QueryRowContext(ctx, qSchemaVersion).Scan(&version); err != nil {
		return 0, fmt.Errorf("not a headscale database: %w", err)
	}
	return version, nil
}

// createTemp creates an empty 0600 file beside the final name.
func createTemp(dir, base string) (string, error) {
	for i := 0; ; i++ {
		p := filepath.Join(dir, "."+base+".tmp-"+strconv.Itoa(os.Getpid())+"-"+strconv.Itoa(i))
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return "", err
		}
		return p, f.Close()
	}
}

// copyInto copies src over the (empty) file dst and syncs it.
func copyInto(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncFile flushes a file to disk and returns its size.
func syncFile(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// syncDir makes a rename in dir durable; failure only costs durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// CheckIntegrity runs PRAGMA integrity_check on the SQLite database at
// path, opened read-only, and returns its schema version. It is meant for
// a file no server has open: a backup, or a database a crashed server left
// behind (a leftover -wal file is read, not checkpointed).
func CheckIntegrity(ctx context.Context, path string) (int, error) {
	abs, err := existingDatabase(path)
	if err != nil {
		return 0, err
	}
	return verifySnapshot(ctx, abs)
}

// BackupStore writes a consistent snapshot of an open store (either
// engine; for PostgreSQL the way `headscale backup` backs it up) to the
// new SQLite file dst, through Copy: one read-only snapshot of the source
// (REPEATABLE READ on PostgreSQL), written into a fresh database of this
// schema under a temporary name with mode 0600, verified row for row,
// then checked with PRAGMA integrity_check, synced and renamed to dst. The
// file restores into either engine (Restore, RestoreStore, db migrate). A
// failure leaves nothing behind; dst must not exist.
func BackupStore(ctx context.Context, src *Store, dst string) (BackupResult, error) {
	dst, tmp, err := backupTarget(dst)
	if err != nil {
		return BackupResult{}, err
	}
	ok := false
	defer func() {
		if !ok {
			for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
				os.Remove(tmp + suffix)
			}
		}
	}()
	out, err := Open(ctx, Options{Path: tmp, CheckpointInterval: -1})
	if err != nil {
		return BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	_, err = Copy(ctx, src, out, CopyOptions{})
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	res, err := finishBackup(ctx, tmp, dst)
	ok = err == nil
	return res, err
}

// RestoreStore replaces every row of dst (a store opened with OpenIdle,
// normally PostgreSQL) with the rows of the SQLite backup at src, in one
// transaction on dst (Copy with Force): a failure leaves dst as it was.
// The backup is checked (integrity_check, schema version) and never
// written: a backup of an older schema is brought up to date in a
// temporary copy.
func RestoreStore(ctx context.Context, src string, dst *Store) (CopyResult, error) {
	src, _, err := checkBackup(ctx, src)
	if err != nil {
		return CopyResult{}, err
	}
	dir, err := os.MkdirTemp("", "headscale-restore-")
	if err != nil {
		return CopyResult{}, fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "backup.sqlite")
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		return CopyResult{}, fmt.Errorf("restore: %w", err)
	}
	if err := copyInto(tmp, src); err != nil {
		return CopyResult{}, fmt.Errorf("restore: %w", err)
	}
	in, err := Open(ctx, Options{Path: tmp, CheckpointInterval: -1})
	if err != nil {
		return CopyResult{}, fmt.Errorf("restore: %w", err)
	}
	defer in.Close()
	res, err := Copy(ctx, in, dst, CopyOptions{Force: true})
	if err != nil {
		return CopyResult{}, fmt.Errorf("restore: %w", err)
	}
	return res, nil
}

// finishBackup checks the snapshot written at tmp (integrity and schema),
// syncs it and renames it to dst; the caller removes tmp on error.
func finishBackup(ctx context.Context, tmp, dst string) (BackupResult, error) {
	version, err := verifySnapshot(ctx, tmp)
	if err != nil {
		return BackupResult{}, fmt.Errorf("backup: the snapshot failed verification: %w", err)
	}
	size, err := syncFile(tmp)
	if err != nil {
		return BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return BackupResult{}, fmt.Errorf("backup: %w", err)
	}
	syncDir(filepath.Dir(dst))
	return BackupResult{Path: dst, Bytes: size, SchemaVersion: version}, nil
}
