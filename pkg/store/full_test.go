package store

// SQLite-only: a full disk, made with max_page_count.

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestStorageFull makes the database run out of room (PRAGMA
// max_page_count on the write connection stands in for a full disk: SQLite
// reports both as SQLITE_FULL) and checks that single statements and
// transactions fail with ErrStorageFull and a message saying so, that
// nothing half-written stays, and that writes succeed again once there is
// room, on the same open store.
func TestStorageFull(t *testing.T) {
	s := openTest(t)
	ctx := t.Context()
	var pages int
	if err := s.write.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := s.write.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages+2)); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 2000)
	var created []User
	var fullErr error
	for i := 0; i < 1000 && fullErr == nil; i++ {
		u, err := s.CreateUser(ctx, User{Name: fmt.Sprintf("u%d", i), DisplayName: big})
		if err != nil {
			fullErr = err
			break
		}
		created = append(created, u)
	}
	if !errors.Is(fullErr, ErrStorageFull) || !strings.Contains(fullErr.Error(), "disk is full") {
		t.Fatalf("after %d users: %v; want ErrStorageFull saying the disk is full", len(created), fullErr)
	}
	// A transaction (delete a user and its keys) fails the same way or
	// succeeds (a delete may need no new page); either way the store
	// stays usable.
	if err := s.DeleteUser(ctx, created[0].ID); err != nil && !errors.Is(err, ErrStorageFull) {
		t.Errorf("DeleteUser on a full database: %v", err)
	}
	users, err := s.ListUsers(ctx)
	if err != nil {
		t.Fatalf("reading on a full database: %v", err)
	}
	if len(users) < len(created)-1 || len(users) > len(created) {
		t.Errorf("%d users stored, want the %d created (one maybe deleted)", len(users), len(created))
	}

	if _, err := s.write.ExecContext(ctx, `PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, User{Name: "after", DisplayName: big}); err != nil {
		t.Fatalf("write after room returned: %v", err)
	}
	if err := s.DeleteUser(ctx, created[len(created)-1].ID); err != nil {
		t.Fatalf("transaction after room returned: %v", err)
	}
}
