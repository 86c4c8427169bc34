package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// TestPrivateFileModes: a server started under a umask that would let
// everyone read new files creates its keys, database, -wal and -shm with
// mode 0600 and warns about nothing; files another install left readable
// by others are named in one warning each (path, mode, fix) and the server
// still starts.
func TestPrivateFileModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	cfg := loadTestConfig(t, dir, "")
	files := []string{cfg.Noise.PrivateKeyPath, cfg.DERP.Server.PrivateKeyPath,
		cfg.Database.SQLite.Path, cfg.Database.SQLite.Path + "-wal", cfg.Database.SQLite.Path + "-shm"}

	// start runs New, checks every file while the store is open, closes
	// and returns the warnings logged.
	start := func(check func(path string, perm os.FileMode)) map[string]string {
		t.Helper()
		var buf bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
		s, err := New(context.Background(), cfg, log, "test")
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		for _, p := range files {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			check(p, fi.Mode().Perm())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		warned := map[string]string{}
		for line := range bytes.Lines(buf.Bytes()) {
			var rec struct{ Msg, Path, Mode, Fix string }
			if err := json.Unmarshal(line, &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if rec.Fix != "chmod 600 "+rec.Path {
				t.Errorf("warning %q: fix %q, want %q", rec.Msg, rec.Fix, "chmod 600 "+rec.Path)
			}
			warned[rec.Path] = rec.Mode
		}
		return warned
	}

	warned := start(func(p string, perm os.FileMode) {
		if perm != 0o600 {
			t.Errorf("%s created with mode %04o, want 0600", filepath.Base(p), perm)
		}
	})
	if len(warned) != 0 {
		t.Errorf("fresh install: warnings %v, want none", warned)
	}

	// Files as a looser install left them. SQLite gives -wal and -shm the
	// database file's mode.
	loose := map[string]os.FileMode{files[0]: 0o644, files[1]: 0o640, files[2]: 0o604}
	for p, m := range loose {
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	warned = start(func(p string, perm os.FileMode) {
		want, ok := loose[p]
		if !ok {
			want = loose[files[2]]
		}
		if perm != want {
			t.Errorf("%s: mode %04o, want %04o (a warning, not a change)", filepath.Base(p), perm, want)
		}
	})
	want := map[string]string{files[0]: "0644", files[1]: "0640", files[2]: "0604", files[3]: "0604", files[4]: "0604"}
	for p, m := range want {
		if warned[p] != m {
			t.Errorf("warning for %s: mode %q, want %q", filepath.Base(p), warned[p], m)
		}
	}
	for p := range warned {
		if !slices.Contains(files, p) {
			t.Errorf("unexpected warning for %s", p)
		}
	}
}
