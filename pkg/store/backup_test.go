package store

// SQLite-only: Backup, Restore and CheckIntegrity work on SQLite files
// (PostgreSQL backups are a later step of issue 14).

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBackupWhileOpenAndRestore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "db.sqlite")
	s, err := Open(ctx, Options{Path: dbPath, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}

	// The snapshot is taken while the store is open and holds data that is
	// still only in the -wal file.
	dst := filepath.Join(dir, "backups", "snap.sqlite")
	os.MkdirAll(filepath.Dir(dst), 0o700)
	res, err := Backup(ctx, dbPath, dst)
	if err != nil {
		t.Fatal(err)
	}
	if res.Path != dst || res.Bytes <= 0 || res.SchemaVersion < 1 {
		t.Fatalf("result = %+v", res)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot mode: %v %v", fi.Mode(), err)
	}
	if _, err := Backup(ctx, dbPath, dst); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second backup to the same path: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "backups", ".*tmp*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}

	// Restore refuses while the store is open.
	if _, err := Restore(ctx, dst, dbPath); !errors.Is(err, ErrInUse) {
		t.Fatalf("restore under a running store: %v", err)
	}

	// A change after the backup disappears with the restore; the old file
	// is kept aside.
	if _, err := s.CreateUser(ctx, User{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rr, err := Restore(ctx, dst, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Aside == "" {
		t.Fatal("no aside path")
	}
	if _, err := os.Stat(rr.Aside); err != nil {
		t.Fatalf("old database not kept: %v", err)
	}
	s, err = Open(ctx, Options{Path: dbPath, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	users, err := s.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0].Name != "alice" {
		t.Fatalf("users after restore = %+v", users)
	}
	old, err := Open(ctx, Options{Path: rr.Aside, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if users, _ := old.ListUsers(ctx); len(users) != 2 {
		t.Fatalf("aside database lost data: %+v", users)
	}
}

func TestBackupAndRestoreRefuseBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	notDB := filepath.Join(dir, "notes.txt")
	os.WriteFile(notDB, []byte("hello, this is not a database file at all"), 0o600)
	corrupt := filepath.Join(dir, "corrupt.sqlite")
	os.WriteFile(corrupt, append([]byte(sqliteMagic), make([]byte, 4000)...), 0o600)

	if _, err := Backup(ctx, filepath.Join(dir, "missing.sqlite"), filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), "no database") {
		t.Errorf("backup of a missing file: %v", err)
	}
	if _, err := Backup(ctx, notDB, filepath.Join(dir, "out")); err == nil {
		t.Error("backup of a text file succeeded")
	}
	dbPath := filepath.Join(dir, "db.sqlite")
	s, err := Open(ctx, Options{Path: dbPath, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, src := range []string{notDB, corrupt, filepath.Join(dir, "missing.sqlite")} {
		if _, err := Restore(ctx, src, dbPath); err == nil {
			t.Errorf("restore from %s succeeded", src)
		}
	}
	// Nothing was moved aside by the refused restores.
	aside, _ := filepath.Glob(dbPath + ".pre-restore-*")
	if len(aside) != 0 {
		t.Errorf("refused restore moved files: %v", aside)
	}
}
