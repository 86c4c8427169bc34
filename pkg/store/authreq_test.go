package store

import (
	"errors"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
)

// TestAuthRequests: an auth request is opened once, claimed by one server
// at a time (a second claim is busy; a released or lapsed claim can be
// taken again), decided once with an auth_decided record the other
// servers read, and refused to claim once decided or expired; a request
// taken is gone.
func TestAuthRequests(t *testing.T) {
	s := pgEngine(t).open(t, func(o *Options) { o.ChangeLog = &ChangeLogOptions{Origin: "a/1"} })
	ctx := t.Context()
	now := time.Now()
	open := func(id string, expires time.Time) {
		t.Helper()
		if err := s.PutAuthRequest(ctx, AuthRequest{ID: id, Kind: "registration", Data: []byte(`{"x":1}`), CreatedAt: now, ExpiresAt: expires}); err != nil {
			t.Fatal(err)
		}
	}
	open("r1", now.Add(time.Hour))
	if err := s.PutAuthRequest(ctx, AuthRequest{ID: "r1", Kind: "registration", Data: []byte(`{}`), CreatedAt: now, ExpiresAt: now}); !errors.Is(err, ErrConflict) {
		t.Errorf("opening r1 twice: %v", err)
	}
	if r, err := s.GetAuthRequest(ctx, "r1"); err != nil || r.Status != AuthPending || string(r.Data) != `{"x":1}` || r.Kind != "registration" {
		t.Fatalf("GetAuthRequest r1 = %+v, %v", r, err)
	}
	if _, err := s.GetAuthRequest(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetAuthRequest unknown: %v", err)
	}

	if _, err := s.ClaimAuthRequest(ctx, "r1", now, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimAuthRequest(ctx, "r1", now, time.Hour); !errors.Is(err, ErrAuthBusy) {
		t.Errorf("second claim: %v, want ErrAuthBusy", err)
	}
	if err := s.ReleaseAuthRequest(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	// A claim that lapses (its server died) can be taken again.
	if _, err := s.ClaimAuthRequest(ctx, "r1", now, time.Millisecond); err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	tstest.WaitFor(t, 10*time.Second, "the lapsed claim to be taken again", func() error {
		_, err := s.ClaimAuthRequest(ctx, "r1", now, time.Hour)
		return err
	})

	head := logHead(t, s)
	if err := s.DecideAuthRequest(ctx, "r1", "completed", []byte(`{"node":7}`), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.DecideAuthRequest(ctx, "r1", "rejected", nil, time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("deciding twice: %v", err)
	}
	recs, err := s.ReadChanges(ctx, head, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("records of the decision: %v, %v", recs, err)
	}
	d, err := recs[0].AuthDecided()
	if err != nil || d.ID != "r1" || d.Kind != "registration" || d.Status != "completed" || string(d.Outcome) != `{"node":7}` {
		t.Errorf("decision record = %+v, %v", d, err)
	}
	if r, err := s.ClaimAuthRequest(ctx, "r1", now, time.Hour); !errors.Is(err, ErrAuthDecided) || r.Status != "completed" || string(r.Outcome) != `{"node":7}` {
		t.Errorf("claiming a decided request = %+v, %v; want ErrAuthDecided with the row", r, err)
	}

	open("r2", now.Add(time.Minute))
	if _, err := s.ClaimAuthRequest(ctx, "r2", now.Add(2*time.Minute), time.Hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("claiming an expired request: %v, want ErrNotFound", err)
	}
	if _, err := s.ClaimAuthRequest(ctx, "nope", now, time.Hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("claiming an unknown request: %v", err)
	}

	open("r3", now.Add(time.Hour))
	if r, err := s.TakeAuthRequest(ctx, "r3"); err != nil || r.ID != "r3" {
		t.Fatalf("TakeAuthRequest = %+v, %v", r, err)
	}
	if _, err := s.TakeAuthRequest(ctx, "r3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("taking twice: %v", err)
	}
	// A decision kept longer (an SSH check's approval) outlives the
	// request's expiry, which "dropped", decided without keep, does not;
	// DecidedAuthRequests lists what is kept.
	for _, id := range []string{"kept", "dropped"} {
		// Opened three hours ago, expired 90 minutes ago.
		if err := s.PutAuthRequest(ctx, AuthRequest{ID: id, Kind: "registration", Data: []byte(`{}`), CreatedAt: now.Add(-3 * time.Hour), ExpiresAt: now.Add(-90 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ClaimAuthRequest(ctx, id, now.Add(-2*time.Hour), time.Minute); err != nil {
			t.Fatalf("claiming %s: %v", id, err)
		}
	}
	if err := s.DecideAuthRequest(ctx, "kept", "approved", []byte(`{"a":1}`), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.DecideAuthRequest(ctx, "dropped", "approved", nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// Opening a request drops those expired over an hour before.
	open("old", now.Add(-2*time.Hour))
	open("r4", now.Add(time.Hour))
	if _, err := s.GetAuthRequest(ctx, "old"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a request expired two hours ago is still there: %v", err)
	}
	got, err := s.DecidedAuthRequests(ctx, "registration", "approved")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range got {
		names = append(names, r.ID)
	}
	if len(got) != 1 || got[0].ID != "kept" || string(got[0].Outcome) != `{"a":1}` || !got[0].ExpiresAt.Equal(now.Add(time.Hour).Truncate(time.Millisecond)) {
		t.Errorf("DecidedAuthRequests = %v (%+v), want only kept, expiring in an hour", names, got)
	}
}
