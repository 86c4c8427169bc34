package store

// SQLite-only: the modes of the database file and its -wal and -shm files.

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFileModes: under a umask that would let everyone read new files, the
// database and the -wal and -shm files SQLite creates beside it are 0600,
// and -wal/-shm files left looser than the database file are restricted
// to its mode when the store opens (never made stricter than it: an
// operator's 0640 database stays readable by its group).
func TestFileModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	mode := func(p string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	write := func(s *Store, name string) {
		t.Helper()
		if _, err := s.CreateUser(t.Context(), User{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name           string
		dbMode         os.FileMode // 0: a new database
		leftover, want os.FileMode
	}{
		{"new database", 0, 0o666, 0o600},
		{"0600 database", 0o600, 0o644, 0o600},
		{"0640 database", 0o640, 0o666, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state", "db.sqlite")
			opts := Options{Path: path, WAL: true, CheckpointInterval: -1}
			a, err := Open(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if tc.dbMode != 0 {
				if err := os.Chmod(path, tc.dbMode); err != nil {
					t.Fatal(err)
				}
			}
			write(a, "first")
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				if tc.dbMode == 0 {
					if got := mode(p); got != 0o600 {
						t.Errorf("%s created with mode %o under umask 0, want 600", filepath.Base(p), got)
					}
				}
			}
			if got := mode(filepath.Dir(path)); got != 0o700 {
				t.Errorf("database directory mode %o, want 700", got)
			}
			// Files left with a looser mode (a) keeps open; the next
			// store to open the database restricts them.
			for _, p := range []string{path + "-wal", path + "-shm"} {
				if err := os.Chmod(p, tc.leftover); err != nil {
					t.Fatal(err)
				}
			}
			b, err := Open(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			write(b, "second")
			for _, p := range []string{path + "-wal", path + "-shm"} {
				if got := mode(p); got != tc.want {
					t.Errorf("%s left %o: mode %o after Open, want %o", filepath.Base(p), tc.leftover, got, tc.want)
				}
			}
		})
	}
}
