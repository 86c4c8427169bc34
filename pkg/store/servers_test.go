package store

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestClusterNeedsPostgres: on SQLite every cluster method refuses.
func TestClusterNeedsPostgres(t *testing.T) {
	s, err := Open(t.Context(), Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.JoinCluster(t.Context(), ClusterServer{ID: "a"}, time.Second); !errors.Is(err, ErrClusterNeedsPostgres) {
		t.Errorf("JoinCluster on SQLite: %v", err)
	}
	if _, _, err := s.AcquireLease(t.Context(), "jobs", "a", time.Second); !errors.Is(err, ErrClusterNeedsPostgres) {
		t.Errorf("AcquireLease on SQLite: %v", err)
	}
}

// TestServerRows: a server joins, renews, shows as live, and expires by
// the database's clock; a renewal of a row that is gone is ErrNotFound
// (the server was fenced).
func TestServerRows(t *testing.T) {
	opts, _ := pgOptions(t)
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if err := s.JoinCluster(ctx, ClusterServer{ID: "a/1", Name: "a", Version: "v", NoisePub: "k"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.JoinCluster(ctx, ClusterServer{ID: "a/1", Name: "a"}, time.Hour); !errors.Is(err, ErrConflict) {
		t.Errorf("joining twice with one ID: %v, want ErrConflict", err)
	}
	if err := s.JoinCluster(ctx, ClusterServer{ID: "b/1", Name: "b"}, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := s.RenewServer(ctx, "a/1", time.Hour, 42, "ph"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		srvs, err := s.ClusterServers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(srvs) != 2 || srvs[0].ID != "a/1" || srvs[1].ID != "b/1" {
			t.Fatalf("servers: %+v", srvs)
		}
		if a := srvs[0]; !a.Live || a.AppliedSeq != 42 || a.PolicyHash != "ph" || a.NoisePub != "k" {
			t.Fatalf("server a after renewal: %+v", a)
		}
		if !srvs[1].Live {
			break // b expired without renewing
		}
		if time.Now().After(deadline) {
			t.Fatal("server b still live long after its lease ran out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := s.write.ExecContext(ctx, `DELETE FROM cluster_servers WHERE id = 'b/1'`); err != nil {
		t.Fatal(err)
	}
	if err := s.RenewServer(ctx, "b/1", time.Hour, 0, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("renewing a removed server: %v, want ErrNotFound", err)
	}
}

// TestLease: one holder at a time under a race; the holder renews
// without a new epoch; after expiry another takes it with the next epoch
// and the old holder's writes are fenced; a release hands over at once.
func TestLease(t *testing.T) {
	opts, _ := pgOptions(t)
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()

	// Eight servers race for a free lease: exactly one gets it.
	var (
		mu      sync.Mutex
		winners []Lease
		wg      sync.WaitGroup
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, ok, err := s.AcquireLease(ctx, "jobs", string(rune('a'+i)), time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				winners = append(winners, l)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 || winners[0].Epoch != 1 {
		t.Fatalf("racing for a free lease: winners %+v, want one with epoch 1", winners)
	}
	first := winners[0]
	again, ok, err := s.AcquireLease(ctx, "jobs", first.Holder, 100*time.Millisecond)
	if err != nil || !ok || again.Epoch != first.Epoch {
		t.Fatalf("holder renewing: %+v %v %v, want the same epoch", again, ok, err)
	}
	other := "z"
	if _, ok, err := s.AcquireLease(ctx, "jobs", other, time.Hour); err != nil || ok {
		t.Fatalf("taking a held lease: ok %v, err %v", ok, err)
	}
	// After the expiry (100ms) another server takes it, with a new epoch.
	var next Lease
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, ok, err := s.AcquireLease(ctx, "jobs", other, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			next = l
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease never expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if next.Epoch != first.Epoch+1 {
		t.Errorf("handover epoch %d, want %d", next.Epoch, first.Epoch+1)
	}
	if held, err := s.HoldsLease(ctx, first); err != nil || held {
		t.Errorf("the old holder still holds the lease: %v %v", held, err)
	}
	if held, err := s.HoldsLease(ctx, next); err != nil || !held {
		t.Errorf("the new holder does not hold the lease: %v %v", held, err)
	}
	// The old holder cannot take it back while it is held.
	if _, ok, _ := s.AcquireLease(ctx, "jobs", first.Holder, time.Hour); ok {
		t.Error("the old holder took a held lease back")
	}
	// A release lets the next server in at once.
	if err := s.ReleaseLease(ctx, next); err != nil {
		t.Fatal(err)
	}
	l, ok, err := s.AcquireLease(ctx, "jobs", first.Holder, time.Hour)
	if err != nil || !ok || l.Epoch != next.Epoch+1 {
		t.Errorf("after a release: %+v %v %v, want epoch %d", l, ok, err, next.Epoch+1)
	}
}

// errOf is the error of a write that also returns the stored node.
func errOf(_ Node, err error) error { return err }

// TestPruneChanges: the jobs holder prunes only records every live server
// applied, and only under its lease.
func TestPruneChanges(t *testing.T) {
	opts, _ := pgOptions(t)
	opts.ChangeLog = &ChangeLogOptions{Origin: "a/1"}
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	for _, name := range []string{"u1", "u2", "u3", "u4"} {
		if _, err := s.CreateUser(ctx, User{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.JoinCluster(ctx, ClusterServer{ID: "a/1", Name: "a", AppliedSeq: 4}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.JoinCluster(ctx, ClusterServer{ID: "b/1", Name: "b", AppliedSeq: 2}, time.Hour); err != nil {
		t.Fatal(err)
	}
	l, ok, err := s.AcquireLease(ctx, "jobs", "a/1", time.Hour)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if n, err := s.PruneChanges(ctx, Lease{Name: "jobs", Holder: "b/1", Epoch: 1}, 0); err != nil || n != 0 {
		t.Errorf("pruning without the lease: %d records, %v", n, err)
	}
	if n, err := s.PruneChanges(ctx, l, 0); err != nil || n != 2 {
		t.Errorf("pruning with b at 2: %d records, %v; want 2", n, err)
	}
	recs, err := s.ReadChanges(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Seq != 3 {
		t.Errorf("left %+v, want records 3 and 4", recs)
	}
	if n, err := s.PruneChanges(ctx, l, time.Hour); err != nil || n != 0 {
		t.Errorf("pruning records younger than the retention: %d, %v", n, err)
	}
}
