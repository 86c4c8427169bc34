package hsimport

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
)

// File names beside the database (<db> is the configured path).
const (
	// importingSuffix: <db>.importing is a conversion being written;
	// a leftover one is incomplete and deleted on start.
	importingSuffix = ".importing"
	// importedSuffix: <db>.imported is a finished, verified conversion
	// whose Headscale original has a verified copy; a leftover one is
	// put in place on start.
	importedSuffix = ".imported"
	// copyInfix: <db>.headscale-<version> is the copy of the original.
	copyInfix = ".headscale-"
	// reportSuffix: <copy>.report.txt is the report.
	reportSuffix = ".report.txt"
)

// Steps of a takeover, named for TakeOverOptions.step (tests stop there
// as a crash would).
const (
	stepCopied    = "copied"    // the verified copy exists
	stepWritten   = "written"   // <db>.importing is complete
	stepCommitted = "committed" // renamed to <db>.imported
	stepSidecars  = "sidecars"  // Headscale's -wal/-shm removed
)

// TakeOverOptions configures TakeOver.
type TakeOverOptions struct {
	// Path is the configured SQLite database.
	Path string
	// Convert are the settings the conversion depends on.
	Convert Options
	// Logger receives the report; nil discards it.
	Logger *slog.Logger
	// Socket is the configured unix socket. Headscale serves its CLI on
	// the same path: when something answers there, Headscale may still
	// be running on the database, and the takeover is refused.
	Socket string

	// step, when set, is called after each step; an error stops the
	// takeover there as a crash would (tests).
	step func(name string) error
}

// TakeOver converts the database at opts.Path in place when Headscale
// wrote it, and does nothing (nil report, nil error) otherwise. Run it
// before the store opens the database.
//
// In order: a conversion interrupted after it was finished is completed
// and an unfinished one deleted; the database is read and checked (a
// release outside 0.23–0.29, a damaged file or a current policy that does
// not compile in database mode is refused, and nothing is changed); a copy
// of the original is written beside it as <db>.headscale-<version> and
// verified (never overwritten); the conversion is written into
// <db>.importing in one transaction and verified; the report is written
// beside the copy; then the conversion is renamed to <db>.imported (the
// point after which a restart completes the takeover), Headscale's -wal
// and -shm files are removed and <db>.imported is renamed to <db>. A crash
// at any point leaves either the untouched Headscale database or the
// finished conversion.
func TakeOver(ctx context.Context, opts TakeOverOptions) (*Report, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", opts.Path, err)
	}
	step := func(name string) error {
		if opts.step != nil {
			return opts.step(name)
		}
		return nil
	}
	if !leftovers(db) {
		// The common case, this server's own database: only read it,
		// and take no lock a running server would conflict with.
		if found, err := hsdb.Probe(ctx, db); err != nil || found == nil {
			return nil, err
		}
	}
	if opts.Socket != "" {
		if unixsock.Answers(opts.Socket) {
			return nil, fmt.Errorf("%s is a Headscale database, and a server answers on %s: stop Headscale first (systemctl stop headscale); nothing was changed", db, opts.Socket)
		}
	}
	unlock, err := lockTarget(db)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := recoverInterrupted(db, log); err != nil {
		return nil, err
	}
	found, err := hsdb.Probe(ctx, db)
	if err != nil || found == nil {
		return nil, err
	}
	log.Info("the database is Headscale's: taking it over", "path", db, "found", found.String())
	snap, err := hsdb.Read(ctx, db)
	if err != nil {
		return nil, err
	}
	data, rep, err := Convert(snap, opts.Convert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (nothing was changed)", db, err)
	}
	cp, err := copyOriginal(ctx, db, rep.Version)
	if err != nil {
		return nil, fmt.Errorf("keeping a copy of the Headscale database: %w (nothing was changed)", err)
	}
	rep.Copy, rep.Database = cp, db
	if err := step(stepCopied); err != nil {
		return nil, err
	}
	importing := db + importingSuffix
	if _, err := store.Import(ctx, importing, data); err != nil {
		return nil, fmt.Errorf("converting the Headscale database: %w (it was left unchanged; its copy is %s)", err, cp)
	}
	// The converted database keeps the store's mode (0600) and gets the
	// original's owner, so the service user can open it.
	if err := copyOwner(db, importing); err != nil {
		os.Remove(importing)
		return nil, fmt.Errorf("converting the Headscale database: %w (it was left unchanged)", err)
	}
	if err := step(stepWritten); err != nil {
		return nil, err
	}
	rep.ReportFile = cp + reportSuffix
	if err := os.WriteFile(rep.ReportFile, []byte(rep.Text()), 0o600); err != nil {
		os.Remove(importing)
		return nil, fmt.Errorf("writing the import report: %w (the database was left unchanged)", err)
	}
	if err := os.Rename(importing, db+importedSuffix); err != nil {
		os.Remove(importing)
		return nil, fmt.Errorf("converting the Headscale database: %w (it was left unchanged)", err)
	}
	syncDir(filepath.Dir(db))
	if err := step(stepCommitted); err != nil {
		return nil, err
	}
	if err := finishSwap(db, step); err != nil {
		return nil, err
	}
	rep.Log(log)
	return rep, nil
}

// leftovers reports whether an interrupted takeover left files.
func leftovers(db string) bool {
	for _, p := range []string{db + importedSuffix, db + importingSuffix, db + importingSuffix + "-journal"} {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	return len(copyTemps(db)) > 0
}

// copyTemps are the temporary files of copies an interrupted takeover was
// writing (see copyOriginal).
func copyTemps(db string) []string {
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(db), "."+filepath.Base(db)+copyInfix+"*.tmp-*"))
	return m
}

// recoverInterrupted completes a takeover that was committed (renamed to
// <db>.imported) and deletes one that was not.
func recoverInterrupted(db string, log *slog.Logger) error {
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		p := db + importingSuffix + suffix
		if err := os.Remove(p); err == nil {
			log.Warn("removed an unfinished Headscale conversion left by an interrupted start", "path", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the unfinished conversion %s: %w", p, err)
		}
	}
	for _, p := range copyTemps(db) {
		if err := os.Remove(p); err == nil {
			log.Warn("removed an unfinished copy of the Headscale database left by an interrupted start", "path", p)
		}
	}
	if _, err := os.Stat(db + importedSuffix); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	log.Warn("completing a Headscale takeover that was interrupted after its conversion was finished", "path", db+importedSuffix)
	return finishSwap(db, nil)
}

// finishSwap removes Headscale's -wal and -shm (the copy holds what they
// held) and puts <db>.imported in place of <db>.
func finishSwap(db string, step func(string) error) error {
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Remove(db + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing Headscale's %s: %w", db+suffix, err)
		}
	}
	if step != nil {
		if err := step(stepSidecars); err != nil {
			return err
		}
	}
	if err := os.Rename(db+importedSuffix, db); err != nil {
		return fmt.Errorf("putting the converted database in place: %w", err)
	}
	syncDir(filepath.Dir(db))
	return nil
}

// copyOriginal writes the verified copy <db>.headscale-<version> (or, when
// that name holds something else, <db>.headscale-<version>-<UTC time>). A
// copy left by an interrupted takeover with the same content is reused.
func copyOriginal(ctx context.Context, db, version string) (string, error) {
	wal := false
	if fi, err := os.Stat(db + "-wal"); err == nil && fi.Size() > 0 {
		wal = true
	}
	// Without a -wal the file is the database: a byte copy with equal
	// SHA-256 sums is exact. With one, the copy is compared row by row.
	same := func(a, b string) (bool, error) {
		if !wal {
			ha, err := fileSHA256(a)
			if err != nil {
				return false, err
			}
			hb, err := fileSHA256(b)
			return err == nil && string(ha) == string(hb), err
		}
		ha, err := contentHash(ctx, a)
		if err != nil {
			return false, err
		}
		hb, err := contentHash(ctx, b)
		return err == nil && ha == hb, err
	}
	name := db + copyInfix + version
	if _, err := os.Lstat(name); err == nil {
		if ok, _ := same(db, name); ok {
			return name, nil
		}
		name += "-" + time.Now().UTC().Format("20060102T150405Z")
		if _, err := os.Lstat(name); err == nil {
			return "", fmt.Errorf("%s already exists", name)
		}
	}
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+strconv.Itoa(os.Getpid()))
	os.Remove(tmp)
	defer os.Remove(tmp)
	if wal {
		// The -wal holds committed transactions the main file lacks:
		// VACUUM INTO writes one file with all of them.
		if err := vacuumInto(ctx, db, tmp); err != nil {
			return "", err
		}
		if ok, err := same(db, tmp); !ok {
			return "", fmt.Errorf("the copy %s does not hold what the original holds (%v)", tmp, err)
		}
	} else if err := byteCopy(db, tmp); err != nil {
		return "", err
	}
	if err := copyOwnerAndMode(db, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, name); err != nil {
		return "", err
	}
	syncDir(filepath.Dir(name))
	return name, nil
}

// byteCopy copies src to the new file dst, syncs it, and checks that the
// two files' SHA-256 sums are equal.
func byteCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(out, io.TeeReader(in, h)); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	got, err := fileSHA256(dst)
	if err != nil {
		return err
	}
	if string(got) != string(h.Sum(nil)) {
		return fmt.Errorf("the copy %s differs from %s (SHA-256)", dst, src)
	}
	return nil
}

func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// vacuumInto writes a consistent copy of the database at src (with what
// its -wal holds) into dst and syncs it.
func vacuumInto(ctx context.Context, src, dst string) error {
	// Read-only mode (not query_only, which refuses VACUUM INTO): the
	// source's -wal is read, not checkpointed into it.
	u := url.URL{Scheme: "file", Path: src, RawQuery: url.Values{"mode": {"ro"}, "_pragma": {"busy_timeout(10000)"}}.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `VACUUM INTO $1`, dst); err != nil {
		return fmt.Errorf("VACUUM INTO %s: %w", dst, err)
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// contentHash is a SHA-256 over every table's name, row count and rows (in
// rowid order), read through SQLite: equal for a byte copy and for a
// VACUUM INTO copy of the same data.
func contentHash(ctx context.Context, path string) (string, error) {
	db, err := hsdb.OpenRead(path)
	if err != nil {
		return "", err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_stat1' ORDER BY name`)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return "", err
		}
		tables = append(tables, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	h := sha256.New()
	for _, t := range tables {
		r, err := db.QueryContext(ctx, `SELECT * FROM "`+t+`"`)
		if err != nil {
			return "", fmt.Errorf("reading %s of %s: %w", t, path, err)
		}
		cols, _ := r.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		n := 0
		for r.Next() {
			if err := r.Scan(ptrs...); err != nil {
				r.Close()
				return "", err
			}
			for _, v := range vals {
				fmt.Fprintf(h, "%T:%v\x00", v, v)
			}
			h.Write([]byte{'\n'})
			n++
		}
		r.Close()
		if err := r.Err(); err != nil {
			return "", err
		}
		fmt.Fprintf(h, "table %s rows %d\n", t, n)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// copyOwnerAndMode gives dst the permission bits of src and, when run as
// root, its owner, so the service user can still open it.
func copyOwnerAndMode(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	return copyOwner(src, dst)
}

// copyOwner gives dst the owner of src when run as root.
func copyOwner(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes renames in dir durable; failure only costs durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
