package state

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// reachesServer reports whether the compiled filter of server lets node n
// in (its IPv4 address among some rule's sources).
func reachesServer(s *State, server ids.NodeID, n *Node) bool {
	for _, r := range s.CompiledPolicy().Filter(server) {
		if slices.Contains(r.SrcIPs, n.IPv4.String()) {
			return true
		}
	}
	return false
}

func policyChanges(cs []Change) int {
	n := 0
	for _, c := range cs {
		if c.Kind == PolicyChanged {
			n++
		}
	}
	return n
}

// TestLoginGroupsChangeFilter: the groups a user has at login decide what
// their nodes may reach through a policy naming them; a login with the
// same groups (in any order), or with changes only to groups the policy
// does not name, recompiles nothing; an admin's policy edit takes effect
// at once.
func TestLoginGroupsChangeFilter(t *testing.T) {
	ctx := context.Background()
	w := newRoutesWorld(t)
	w.setPolicy(`{"tagOwners": {"tag:server": []},
		"acls": [{"action": "accept", "src": ["oidcgroup:vpn-users"], "dst": ["tag:server:22"]}]}`)
	login := func(groups ...string) (*User, bool) {
		t.Helper()
		u, created, err := w.s.UpsertOIDCUser(ctx, Identity{Provider: "oidc", ProviderID: "https://idp.example.com/alice-sub",
			Name: "alice", Email: "alice@example.com", Groups: groups})
		if err != nil {
			t.Fatal(err)
		}
		return u, created
	}
	alice, created := login("vpn-users", "staff")
	if !created || !slices.Equal(alice.Groups, []string{"staff", "vpn-users"}) {
		t.Fatalf("first login: created %v, user %+v", created, alice)
	}
	w.users["alice"] = alice.ID
	server := w.register("server", "", []string{"tag:server"})
	laptop := w.register("laptop", "alice", nil)
	if !reachesServer(w.s, server.ID, laptop) {
		t.Fatal("alice's laptop cannot reach the server though alice is in vpn-users")
	}

	steps := []struct {
		name      string
		groups    []string
		reach     bool
		recompile bool
	}{
		{"same groups, other order, duplicates", []string{"staff", " vpn-users", "vpn-users"}, true, false},
		{"an unnamed group joined", []string{"staff", "vpn-users", "new-hires"}, true, false},
		{"left the named group", []string{"staff", "new-hires"}, false, true},
		{"an unnamed group left", []string{"staff"}, false, false},
		{"back in the named group", []string{"vpn-users"}, true, true},
		{"no groups at all", nil, false, true},
	}
	for _, st := range steps {
		w.log.take()
		before := w.s.CompiledPolicy()
		u, created := login(st.groups...)
		changes := w.log.take()
		if created || u.ID != alice.ID {
			t.Fatalf("%s: login made a new user %+v", st.name, u)
		}
		if got := reachesServer(w.s, server.ID, laptop); got != st.reach {
			t.Errorf("%s: laptop reaches server = %v, want %v", st.name, got, st.reach)
		}
		if recompiled := w.s.CompiledPolicy() != before; recompiled != st.recompile {
			t.Errorf("%s: recompiled = %v, want %v", st.name, recompiled, st.recompile)
		}
		if got := policyChanges(changes); got != btoi(st.recompile) {
			t.Errorf("%s: %d PolicyChanged, want %d", st.name, got, btoi(st.recompile))
		}
		stored, err := w.s.st.GetUser(ctx, alice.ID)
		if err != nil || !slices.Equal(stored.Groups, NormalizeGroups(st.groups)) {
			t.Errorf("%s: stored groups %q (%v), want %q", st.name, stored.Groups, err, NormalizeGroups(st.groups))
		}
	}

	// An admin naming another group takes effect immediately, without a
	// login.
	login("staff")
	w.setPolicy(`{"tagOwners": {"tag:server": []},
		"acls": [{"action": "accept", "src": ["oidcgroup:staff"], "dst": ["tag:server:22"]}]}`)
	if !reachesServer(w.s, server.ID, laptop) {
		t.Error("after the admin named staff, alice's laptop cannot reach the server")
	}
	// And a group change is still checked against new policies: a policy
	// naming a group nobody has is valid and matches nobody.
	if _, err := w.s.CheckPolicyText(`{"tagOwners": {"tag:server": []},
		"acls": [{"action": "accept", "src": ["oidcgroup:nobody"], "dst": ["tag:server:22"]}]}`); err != nil {
		t.Errorf("a policy naming a group nobody has: %v", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestUpsertOIDCUser: who a login becomes, and what it changes.
func TestUpsertOIDCUser(t *testing.T) {
	ctx := context.Background()
	alice := Identity{Provider: "oidc", ProviderID: "https://idp.example.com/1", Name: "alice", DisplayName: "Alice",
		Email: "alice@example.com", ProfilePicURL: "https://idp.example.com/a.png", Groups: []string{"eng"}}
	tests := []struct {
		name    string
		setup   func(t *testing.T, s *State)
		login   Identity
		wantErr error
		check   func(t *testing.T, s *State, u *User, created bool, changes []Change)
	}{
		{
			name:  "first login creates the user",
			login: alice,
			check: func(t *testing.T, s *State, u *User, created bool, _ []Change) {
				if !created || u.Name != "alice" || u.Provider != "oidc" || u.ProviderID != alice.ProviderID ||
					u.DisplayName != "Alice" || u.Email != alice.Email || u.ProfilePicURL != alice.ProfilePicURL || !slices.Equal(u.Groups, []string{"eng"}) {
					t.Errorf("created %v, user %+v", created, u)
				}
			},
		},
		{
			name: "a later login updates the profile, not the name",
			setup: func(t *testing.T, s *State) {
				mustUpsert(t, s, alice)
			},
			login: func() Identity {
				id := alice
				id.Name, id.DisplayName, id.Email = "alice2", "Alice B.", "alice@example.org"
				return id
			}(),
			check: func(t *testing.T, s *State, u *User, created bool, changes []Change) {
				if created || u.Name != "alice" || u.DisplayName != "Alice B." || u.Email != "alice@example.org" {
					t.Errorf("created %v, user %+v", created, u)
				}
				if !slices.ContainsFunc(changes, func(c Change) bool { return c.Kind == UserUpdated && c.User.ID == u.ID }) {
					t.Error("no UserUpdated for a new display name")
				}
				if cur, _ := s.User(u.ID); cur != u {
					t.Errorf("state holds %+v, returned %+v", cur, u)
				}
			},
		},
		{
			name:  "a login without an address keeps the stored one",
			setup: func(t *testing.T, s *State) { mustUpsert(t, s, alice) },
			login: func() Identity { id := alice; id.Email = ""; return id }(),
			check: func(t *testing.T, s *State, u *User, created bool, changes []Change) {
				if created || u.Email != alice.Email || len(changes) != 0 {
					t.Errorf("created %v, user %+v, changes %v", created, u, changes)
				}
			},
		},
		{
			name:  "an unchanged login changes nothing",
			setup: func(t *testing.T, s *State) { mustUpsert(t, s, alice) },
			login: alice,
			check: func(t *testing.T, s *State, u *User, created bool, changes []Change) {
				if created || len(changes) != 0 {
					t.Errorf("created %v, changes %v", created, changes)
				}
			},
		},
		{
			name: "a local user of that name is not taken over",
			setup: func(t *testing.T, s *State) {
				if _, err := s.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
					t.Fatal(err)
				}
			},
			login:   alice,
			wantErr: ErrIdentityConflict,
		},
		{
			name: "unless linking is allowed",
			setup: func(t *testing.T, s *State) {
				if _, err := s.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
					t.Fatal(err)
				}
			},
			login: func() Identity { id := alice; id.LinkLocalUser = true; return id }(),
			check: func(t *testing.T, s *State, u *User, created bool, _ []Change) {
				if created || u.ID != 1 || u.ProviderID != alice.ProviderID || !slices.Equal(u.Groups, []string{"eng"}) {
					t.Errorf("created %v, user %+v", created, u)
				}
			},
		},
		{
			name:  "another identity's user is never taken over",
			setup: func(t *testing.T, s *State) { mustUpsert(t, s, alice) },
			login: func() Identity {
				id := alice
				id.ProviderID, id.LinkLocalUser = "https://idp.example.com/2", true
				return id
			}(),
			wantErr: ErrIdentityConflict,
		},
		{
			name:    "an identity needs a provider ID",
			login:   Identity{Provider: "oidc", Name: "x"},
			wantErr: ErrInvalidName,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestState(t)
			if tt.setup != nil {
				tt.setup(t, s)
			}
			log := &changeLog{}
			s.SetSink(log)
			u, created, err := s.UpsertOIDCUser(ctx, tt.login)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s, u, created, log.take())
		})
	}
}

func mustUpsert(t *testing.T, s *State, id Identity) *User {
	t.Helper()
	u, _, err := s.UpsertOIDCUser(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestSetUserGroups(t *testing.T) {
	ctx := context.Background()
	s := newTestState(t)
	u, err := s.CreateUser(ctx, store.User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if _, changed, err := s.SetUserGroups(ctx, u.ID, nil); err != nil || changed {
		t.Errorf("setting no groups on a user without groups: changed %v, %v", changed, err)
	}
	got, changed, err := s.SetUserGroups(ctx, u.ID, []string{"b", "a", "a", ""})
	if err != nil || !changed || !slices.Equal(got.Groups, []string{"a", "b"}) {
		t.Errorf("SetUserGroups = %+v, %v, %v", got, changed, err)
	}
	if _, _, err := s.SetUserGroups(ctx, 999, []string{"a"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown user: %v, want ErrNotFound", err)
	}
}

// TestLoginGroupsAutoApprove: a login that brings a group named in
// autoApprovers approves the routes the user's nodes advertise, as a
// policy reload would.
func TestLoginGroupsAutoApprove(t *testing.T) {
	ctx := context.Background()
	w := newRoutesWorld(t)
	w.setPolicy(`{"autoApprovers": {"routes": {"10.0.0.0/8": ["oidcgroup:network"]}},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	id := Identity{Provider: "oidc", ProviderID: "https://idp.example.com/n", Name: "neta", Groups: []string{"staff"}}
	u := mustUpsert(t, w.s, id)
	w.users["neta"] = u.ID
	router := w.register("router", "neta", nil, "10.1.0.0/24")
	if got := w.node(router.ID).ApprovedRoutes; len(got) != 0 {
		t.Fatalf("approved before the user is in the group: %v", got)
	}
	id.Groups = []string{"staff", "network"}
	mustUpsert(t, w.s, id)
	if got := w.node(router.ID).ApprovedRoutes; !slices.Equal(got, pfx("10.1.0.0/24")) {
		t.Errorf("after a login into the approving group: approved %v, want 10.1.0.0/24", got)
	}
	stored, err := w.s.st.GetNode(ctx, router.ID)
	if err != nil || !slices.Equal(stored.ApprovedRoutes, []string{"10.1.0.0/24"}) {
		t.Errorf("stored approved routes %v (%v)", stored.ApprovedRoutes, err)
	}
}
