package hsimport

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/store"
)

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// isHeadscale reports whether the file at path is still Headscale's.
func isHeadscale(t *testing.T, path string) bool {
	t.Helper()
	d, err := hsdb.Probe(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return d != nil
}

// TestTakeOverCrashSafe stops a takeover after each step as a crash
// would: the database is then either the untouched Headscale file or the
// finished conversion, and the next start completes the takeover and
// leaves nothing behind but the database, its copy and the report.
func TestTakeOverCrashSafe(t *testing.T) {
	crash := errors.New("simulated crash")
	for _, tt := range []struct {
		step      string
		headscale bool // the database is still Headscale's after the crash
	}{
		{stepCopied, true},
		{stepWritten, true},
		{stepCommitted, true},
		{stepSidecars, true},
	} {
		t.Run(tt.step, func(t *testing.T) {
			db := buildEra(t, "v0.23.0", "")
			// Headscale's leftover sidecars of a clean stop.
			os.WriteFile(db+"-shm", make([]byte, 32768), 0o600)
			orig, _ := os.ReadFile(db)
			_, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts, step: func(s string) error {
				if s == tt.step {
					return crash
				}
				return nil
			}})
			if !errors.Is(err, crash) {
				t.Fatalf("TakeOver = %v, want the crash", err)
			}
			if got := isHeadscale(t, db); got != tt.headscale {
				t.Fatalf("after a crash at %s the database is Headscale's: %v, want %v", tt.step, got, tt.headscale)
			}
			if now, _ := os.ReadFile(db); !bytes.Equal(now, orig) {
				t.Fatalf("after a crash at %s the Headscale file changed", tt.step)
			}
			// A copy that was being written when the crash came.
			os.WriteFile(filepath.Join(filepath.Dir(db), ".db.sqlite.headscale-v0.23.0.tmp-999999"), []byte("half"), 0o600)
			rep, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts})
			if err != nil {
				t.Fatal(err)
			}
			if tt.step == stepCommitted || tt.step == stepSidecars {
				// The restart completed the committed conversion.
				if rep != nil {
					t.Errorf("the restart converted again: %+v", rep)
				}
			} else if rep == nil || rep.Count(KindNodes).Converted != 5 {
				t.Errorf("the restart did not convert: %+v", rep)
			}
			if isHeadscale(t, db) {
				t.Fatal("still Headscale's after the restart")
			}
			if want := []string{"db.sqlite", "db.sqlite.headscale-v0.23.0", "db.sqlite.headscale-v0.23.0.report.txt"}; !slices.Equal(dirNames(t, filepath.Dir(db)), want) {
				t.Errorf("files %v, want %v", dirNames(t, filepath.Dir(db)), want)
			}
			if cp, _ := os.ReadFile(db + ".headscale-v0.23.0"); !bytes.Equal(cp, orig) {
				t.Error("the copy is not the original")
			}
			s, err := store.Open(t.Context(), store.Options{Path: db, WAL: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if nodes, err := s.ListNodes(t.Context()); err != nil || len(nodes) != 5 {
				t.Errorf("%d nodes, %v", len(nodes), err)
			}
		})
	}
}

// TestTakeOverRefusesAndChangesNothing: a database from a newer Headscale
// or one whose current policy does not compile is refused before anything
// is written.
func TestTakeOverRefusesAndChangesNothing(t *testing.T) {
	for name, build := range map[string]func(t *testing.T) string{
		"newer": func(t *testing.T) string {
			return buildEra(t, "v0.29.2", "INSERT INTO migrations VALUES('202701010000-from-the-future');")
		},
		"policy": func(t *testing.T) string {
			return buildEra(t, "v0.26.1", `INSERT INTO policies VALUES(1,NULL,NULL,NULL,'{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["*:*"]}]}');`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			db := build(t)
			orig, _ := os.ReadFile(db)
			_, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: Options{PolicyMode: "database"}})
			if err == nil {
				t.Fatal("TakeOver succeeded")
			}
			t.Log(err)
			if now, _ := os.ReadFile(db); !bytes.Equal(now, orig) {
				t.Error("the file changed")
			}
			if names := dirNames(t, filepath.Dir(db)); !slices.Equal(names, []string{"db.sqlite"}) {
				t.Errorf("files %v", names)
			}
		})
	}
}

// TestTakeOverLeavesOthersAlone: this server's own database, a missing
// file and another program's database are not touched.
func TestTakeOverLeavesOthersAlone(t *testing.T) {
	dir := t.TempDir()
	own := filepath.Join(dir, "own.sqlite")
	s, err := store.Open(t.Context(), store.Options{Path: own})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, p := range []string{own, filepath.Join(dir, "missing.sqlite")} {
		rep, err := TakeOver(t.Context(), TakeOverOptions{Path: p})
		if rep != nil || err != nil {
			t.Errorf("%s: %v, %v", p, rep, err)
		}
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"own.sqlite"}) {
		t.Errorf("files %v", names)
	}
}

// TestTakeOverWAL: a Headscale that did not stop cleanly left committed
// rows in its -wal only. The copy (VACUUM INTO) holds them, the conversion
// has them, and Headscale's -wal and -shm are gone afterwards.
func TestTakeOverWAL(t *testing.T) {
	src := buildEra(t, "v0.26.1", "")
	dir := t.TempDir()
	db := filepath.Join(dir, "db.sqlite")
	b, _ := os.ReadFile(src)
	os.WriteFile(db, b, 0o600)
	hs, err := sql.Open("sqlite", "file:"+db+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	hs.SetMaxOpenConns(1)
	if _, err := hs.Exec(`PRAGMA wal_autocheckpoint=0; INSERT INTO users VALUES(5,'2025-06-03 10:00:00+00:00','2025-06-03 10:00:00+00:00',NULL,'eve','','',NULL,'','')`); err != nil {
		t.Fatal(err)
	}
	// Snapshot the three files while the connection holds them, as a
	// crash would leave them.
	crashed := t.TempDir()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(db + suffix)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(crashed, "db.sqlite"+suffix), b, 0o600)
	}
	hs.Close()
	db = filepath.Join(crashed, "db.sqlite")
	if fi, err := os.Stat(db + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("no -wal to test with: %v", err)
	}

	rep, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Count(KindUsers).Converted != 2 {
		t.Errorf("users %+v, want the one only in the -wal too", rep.Count(KindUsers))
	}
	snap, err := hsdb.Read(t.Context(), rep.Copy)
	if err != nil || len(snap.Users) != 2 {
		t.Errorf("the copy holds %d users (%v), want 2", len(snap.Users), err)
	}
	if names := dirNames(t, crashed); !slices.Equal(names, []string{"db.sqlite", "db.sqlite.headscale-v0.26.1", "db.sqlite.headscale-v0.26.1.report.txt"}) {
		t.Errorf("files %v", names)
	}
}

// TestTakeOverRefusesWhileHeadscaleAnswers: something answers on the
// configured socket (Headscale serves its CLI there), so Headscale may
// still have the database open: refused, nothing changed.
func TestTakeOverRefusesWhileHeadscaleAnswers(t *testing.T) {
	db := buildEra(t, "v0.26.1", "")
	sock, ln := headscaleAnswering(t)
	orig, _ := os.ReadFile(db)
	_, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts, Socket: sock})
	if err == nil || !strings.Contains(err.Error(), "stop Headscale first") {
		t.Fatalf("TakeOver = %v", err)
	}
	if now, _ := os.ReadFile(db); !bytes.Equal(now, orig) || len(dirNames(t, filepath.Dir(db))) != 1 {
		t.Error("something changed")
	}
	ln.Close()
	if _, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts, Socket: sock}); err != nil {
		t.Errorf("after Headscale stopped: %v", err)
	}
}

// headscaleAnswering stands in for a running Headscale: a unix socket
// that accepts connections (and closes them) until the test ends or the
// returned listener is closed. It returns the socket's path.
func headscaleAnswering(t *testing.T) (string, net.Listener) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hs.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return sock, ln
}
