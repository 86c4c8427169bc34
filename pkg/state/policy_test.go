package state

import (
	"context"
	"errors"
	"testing"

	"github.com/hsctl/headscale/pkg/store"
)

// TestStorePolicyKeepsStoredAndInForceTogether changes the users between
// StorePolicy's database write and putting the policy in force (the window
// where a policy used to be stored without being in force) and checks that
// afterwards the newest stored policy is the one in force, and that a
// policy the change made invalid is rejected as the client's mistake.
func TestStorePolicyKeepsStoredAndInForceTogether(t *testing.T) {
	const (
		before = `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`
		// Names alice by e-mail: a second user with that address makes
		// it ambiguous, which does not compile.
		byEmail = `{"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["*:*"]}]}`
	)
	for _, tc := range []struct {
		name string
		// afterWrite runs between the write and the swap.
		afterWrite func(t *testing.T, s *State)
		wantErr    error // nil: the policy is stored and in force
	}{
		{name: "nothing changes", afterWrite: func(*testing.T, *State) {}},
		{name: "an unrelated user is added", afterWrite: func(t *testing.T, s *State) {
			if _, err := s.CreateUser(context.Background(), store.User{Name: "carol", Email: "carol@example.com"}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a user makes the policy ambiguous", wantErr: ErrPolicyRejected, afterWrite: func(t *testing.T, s *State) {
			if _, err := s.CreateUser(context.Background(), store.User{Name: "alice2", Email: "alice@example.com"}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := newTestState(t)
			if _, err := s.CreateUser(ctx, store.User{Name: "alice", Email: "alice@example.com"}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.StorePolicy(ctx, before); err != nil {
				t.Fatalf("storing the first policy: %v", err)
			}
			s.afterPolicyWrite = func() { tc.afterWrite(t, s) }
			_, err := s.StorePolicy(ctx, byEmail)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("StorePolicy = %v, want %v", err, tc.wantErr)
			}
			stored, storedAt, gerr := s.st.GetPolicy(ctx)
			if gerr != nil {
				t.Fatal(gerr)
			}
			inForce, inForceAt := s.PolicyText()
			if stored != inForce || !storedAt.Equal(inForceAt) {
				t.Errorf("stored policy %q (%v) and policy in force %q (%v) differ", stored, storedAt, inForce, inForceAt)
			}
			want := byEmail
			if tc.wantErr != nil {
				want = before
			}
			if inForce != want {
				t.Errorf("policy in force %q, want %q", inForce, want)
			}
			// The policy in force compiles against the current users.
			if _, err := s.CheckPolicyText(inForce); err != nil {
				t.Errorf("the policy in force does not compile against the current users: %v", err)
			}
		})
	}
}
