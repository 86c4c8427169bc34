package store

import (
	"errors"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)
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
