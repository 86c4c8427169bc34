package authrows

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/pkg/store"
)

// pg is this test binary's PostgreSQL (started by the first test that
// asks, stopped by TestMain).
var pg = pgtest.New()

func TestMain(m *testing.M) { os.Exit(pg.Main(m)) }

// data is what the tests' requests hold.
type data struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

// open returns two kinds of rows on one fresh database with the change log
// on: a request of one is never seen through the other.
func open(t *testing.T) (Kind[data], Kind[data]) {
	t.Helper()
	db := pg.Database(t)
	st, err := store.Open(t.Context(), store.Options{
		Postgres:  &store.PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User},
		ChangeLog: &store.ChangeLogOptions{Origin: "test/1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return Kind[data]{Store: st, Name: "a", What: "request a"}, Kind[data]{Store: st, Name: "b", What: "request b"}
}

// TestRows: a request is put, read and claimed with its data as put, by
// its own kind only; a decision's outcome is stored and decoded; a claim
// of a decided request returns the row with ErrAuthDecided; a request
// taken is gone, and one expired is not taken.
func TestRows(t *testing.T) {
	a, b := open(t)
	ctx := t.Context()
	now := time.Now()
	put := func(k Kind[data], id string, v data, expires time.Time) {
		t.Helper()
		if err := k.Put(ctx, id, v, now, expires); err != nil {
			t.Fatalf("putting %s: %v", id, err)
		}
	}
	put(a, "r1", data{"one", 1}, now.Add(time.Hour))
	put(b, "r2", data{"two", 2}, now.Add(time.Hour))
	put(a, "old", data{"old", 3}, now.Add(-time.Minute))
	if err := a.Put(ctx, "r1", data{}, now, now.Add(time.Hour)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("putting r1 twice: %v, want ErrConflict", err)
	}

	for _, tc := range []struct {
		name string
		k    Kind[data]
		id   string
		want data
		err  error
	}{
		{"own kind", a, "r1", data{"one", 1}, nil},
		{"other kind's id", a, "r2", data{}, store.ErrNotFound},
		{"other kind's own", b, "r2", data{"two", 2}, nil},
		{"unknown", a, "nope", data{}, store.ErrNotFound},
	} {
		t.Run("get "+tc.name, func(t *testing.T) {
			row, err := tc.k.Get(ctx, tc.id)
			if !errors.Is(err, tc.err) || (err == nil && (row.Value != tc.want || row.ID != tc.id || row.Status != store.AuthPending)) {
				t.Errorf("Get(%s) = %+v, %v; want %+v, %v", tc.id, row, err, tc.want, tc.err)
			}
		})
	}

	// Claimed, decided with an outcome, then claimed again: decided.
	if row, err := a.Claim(ctx, "r1", now, time.Minute); err != nil || row.Value != (data{"one", 1}) {
		t.Fatalf("claiming r1 = %+v, %v", row, err)
	}
	if _, err := a.Claim(ctx, "r1", now, time.Minute); !errors.Is(err, store.ErrAuthBusy) {
		t.Errorf("claiming r1 twice: %v, want ErrAuthBusy", err)
	}
	if _, err := b.Claim(ctx, "r1", now, time.Minute); !errors.Is(err, store.ErrAuthBusy) && !errors.Is(err, store.ErrNotFound) {
		t.Errorf("claiming r1 as the other kind: %v", err)
	}
	if err := a.Decide(ctx, "r1", "approved", data{"outcome", 9}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	row, err := a.Claim(ctx, "r1", now, time.Minute)
	if !errors.Is(err, store.ErrAuthDecided) || row.Status != "approved" || row.Value != (data{"one", 1}) {
		t.Fatalf("claiming decided r1 = %+v, %v; want the row with ErrAuthDecided", row, err)
	}
	if out, err := Outcome[data](row.Outcome); err != nil || out != (data{"outcome", 9}) {
		t.Errorf("outcome = %+v, %v", out, err)
	}
	if out, err := Outcome[data](nil); err != nil || out != (data{}) {
		t.Errorf("empty outcome = %+v, %v; want the zero value", out, err)
	}
	if _, err := Outcome[data]([]byte("{")); err == nil {
		t.Error("a bad outcome decoded")
	}
	if err := a.Decide(ctx, "r1", "rejected", nil, time.Time{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deciding r1 twice: %v, want ErrNotFound", err)
	}

	// Released, a claim can be taken again.
	if _, err := b.Claim(ctx, "r2", now, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Claim(ctx, "r2", now, time.Hour); err != nil {
		t.Errorf("claiming r2 after its release: %v", err)
	}

	// Taken once; an expired request is not taken.
	if row, err := b.Take(ctx, "r2", now); err != nil || row.Value != (data{"two", 2}) {
		t.Errorf("taking r2 = %+v, %v", row, err)
	}
	if _, err := b.Take(ctx, "r2", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("taking r2 twice: %v, want ErrNotFound", err)
	}
	if _, err := a.Take(ctx, "old", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("taking an expired request: %v, want ErrNotFound", err)
	}
}
