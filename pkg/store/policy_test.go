package store

import (
	"errors"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) { forEachEngine(t, testPolicy) }

func testPolicy(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	if _, _, err := s.GetPolicy(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPolicy on empty store = %v, want ErrNotFound", err)
	}
	for _, doc := range []string{
		`{"acls": []}`,
		"// HuJSON with comments\n{\n  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},],\n}\n",
		"",
	} {
		before := time.Now().Add(-time.Second)
		if err := s.SetPolicy(ctx, doc); err != nil {
			t.Fatal(err)
		}
		got, at, err := s.GetPolicy(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got != doc {
			t.Errorf("GetPolicy = %q, want %q", got, doc)
		}
		if at.Before(before) || at.After(time.Now().Add(time.Second)) || at.Location() != time.UTC {
			t.Errorf("updatedAt = %v", at)
		}
	}
}

// TestDeletePolicy: deleting the newest row (a rolled-back policy change)
// makes the one stored before it current again; deleting a missing row is
// not an error.
func TestDeletePolicy(t *testing.T) { forEachEngine(t, testDeletePolicy) }

func testDeletePolicy(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	if err := s.SetPolicy(ctx, `{"acls": []}`); err != nil {
		t.Fatal(err)
	}
	id, at, err := s.InsertPolicy(ctx, `{"grants": []}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, gotAt, _ := s.GetPolicy(ctx); got != `{"grants": []}` || !gotAt.Equal(at) {
		t.Fatalf("after InsertPolicy: GetPolicy = %q at %v, want the inserted text at %v", got, gotAt, at)
	}
	if err := s.DeletePolicy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.GetPolicy(ctx); got != `{"acls": []}` {
		t.Errorf("after DeletePolicy: GetPolicy = %q, want the earlier policy", got)
	}
	if err := s.DeletePolicy(ctx, id); err != nil {
		t.Errorf("deleting a missing row: %v", err)
	}
}
