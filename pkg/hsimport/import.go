package hsimport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/store"
)

// ImportOptions configures Import.
type ImportOptions struct {
	// From is the Headscale database to read; it is never written.
	From string
	// Path is this server's database to write. It must be missing, an
	// empty file or a database of this server with no rows. When it is
	// From itself, Import takes the database over as TakeOver does.
	Path string
	// DryRun reads and converts, and writes nothing.
	DryRun bool
	// Convert are the settings the conversion depends on.
	Convert Options
	// Logger receives the report; nil discards it.
	Logger *slog.Logger
	// Socket is the configured unix socket (see TakeOverOptions).
	Socket string
}

// ErrInUse is returned while a server holds the target database open.
var ErrInUse = errors.New("the database is in use by a running headscale; stop it first (systemctl stop headscale)")

// Import converts the Headscale database opts.From into opts.Path (see
// ImportOptions), for `headscale db import-headscale`. The report is
// written beside the target as <path>.headscale-<version>.report.txt.
func Import(ctx context.Context, opts ImportOptions) (*Report, error) {
	from, err := filepath.Abs(opts.From)
	if err != nil {
		return nil, err
	}
	path, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, err
	}
	if from == path && !opts.DryRun {
		rep, err := TakeOver(ctx, TakeOverOptions{Path: path, Convert: opts.Convert, Logger: opts.Logger, Socket: opts.Socket})
		if err == nil && rep == nil {
			return nil, fmt.Errorf("%s is not a Headscale database", from)
		}
		return rep, err
	}
	found, err := hsdb.Probe(ctx, from)
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("%s: %w: it is not a Headscale database", from, hsdb.ErrRefused)
	}
	snap, err := hsdb.Read(ctx, from)
	if err != nil {
		return nil, err
	}
	data, rep, err := Convert(snap, opts.Convert)
	if err != nil {
		return rep, err
	}
	if opts.DryRun {
		return rep, nil
	}
	unlock, err := lockTarget(path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := store.CheckEmpty(ctx, path); err != nil {
		return nil, fmt.Errorf("refusing to import into %s: %w (import only into a new or empty database)", path, err)
	}
	importing := path + importingSuffix
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		os.Remove(importing + suffix)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if _, err := store.Import(ctx, importing, data); err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err == nil {
		if err := copyOwner(path, importing); err != nil {
			os.Remove(importing)
			return nil, err
		}
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			os.Remove(importing)
			return nil, err
		}
	}
	if err := os.Rename(importing, path); err != nil {
		os.Remove(importing)
		return nil, err
	}
	syncDir(filepath.Dir(path))
	rep.Database = path
	rep.ReportFile = path + copyInfix + rep.Version + reportSuffix
	if err := os.WriteFile(rep.ReportFile, []byte(rep.Text()), 0o600); err != nil {
		return rep, fmt.Errorf("the import is done, but its report could not be written: %w", err)
	}
	if opts.Logger != nil {
		rep.Log(opts.Logger)
	}
	return rep, nil
}

// lockTarget takes the exclusive flock a running server's shared lock
// (store.Open) conflicts with, when the target exists.
func lockTarget(path string) (func(), error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", path, ErrInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
