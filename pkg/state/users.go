package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// Users: creating, renaming, deleting and listing them.

// CreateUser adds a user.
func (s *State) CreateUser(ctx context.Context, u store.User) (*User, error) {
	u.Name = strings.TrimSpace(u.Name)
	u.Groups = NormalizeGroups(u.Groups)
	if u.Name == "" {
		return nil, fmt.Errorf("%w: user name must not be empty", ErrInvalidName)
	}
	created, err := s.st.CreateUser(ctx, u)
	if err != nil {
		return nil, err
	}
	nu := userFromStore(created)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setUsersLocked(withUser(s.users, nu))
	s.recompileForLocked(nil)
	s.emitPolicyLocked()
	return nu, nil
}

// RenameUser renames a user; nodes' peers see the new login name.
func (s *State) RenameUser(ctx context.Context, id ids.UserID, name string) (*User, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return nil, fmt.Errorf("%w: user name must not be empty", ErrInvalidName)
	}
	u, err := s.st.RenameUser(ctx, id, name)
	if err != nil {
		return nil, err
	}
	nu := userFromStore(u)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setUsersLocked(withUser(s.users, nu))
	s.recompileForLocked(nil)
	s.emitLocked(Change{Kind: UserUpdated, User: nu})
	s.emitPolicyLocked()
	return nu, nil
}

// DeleteUser removes a user that owns no nodes.
func (s *State) DeleteUser(ctx context.Context, id ids.UserID) error {
	// The user's pre-auth keys go with it, and nodes registered with them
	// (owned by another user since, SetOwner) lose the link, in the store
	// and so here: a later write of such a node must not name a key that
	// is gone.
	s.regMu.Lock()
	defer s.regMu.Unlock()
	keys, err := s.st.ListPreAuthKeys(ctx)
	if err != nil {
		return fmt.Errorf("listing the user's pre-auth keys: %w", err)
	}
	gone := make(map[ids.PreAuthKeyID]bool)
	for _, k := range keys {
		if k.UserID != nil && *k.UserID == id {
			gone[k.ID] = true
		}
	}
	if err := s.st.DeleteUser(ctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.sorted {
		if n.AuthKeyID != 0 && gone[n.AuthKeyID] {
			c := n.clone()
			c.AuthKeyID = 0
			s.setNode(c)
		}
	}
	s.removeUserLocked(id)
	s.emitPolicyLocked()
	return nil
}

// removeUserLocked drops user id, already deleted from the store, from
// memory and recompiles the policy without it (s.mu held). The caller
// emits the policy change.
func (s *State) removeUserLocked(id ids.UserID) {
	m := make(map[ids.UserID]*User, len(s.users))
	for k, v := range s.users {
		if k != id {
			m[k] = v
		}
	}
	s.setUsersLocked(m)
	s.recompileForLocked(nil)
}

// Users returns all users ordered by ID.
func (s *State) Users() []*User {
	s.mu.Lock()
	users := s.users
	s.mu.Unlock()
	out := make([]*User, 0, len(users))
	for _, u := range users {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *User) int { return int(a.ID) - int(b.ID) })
	return out
}

func withUser(m map[ids.UserID]*User, u *User) map[ids.UserID]*User {
	out := make(map[ids.UserID]*User, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	out[u.ID] = u
	return out
}

// setUsersLocked replaces the users (the map is never modified in place)
// and drops what was derived from them.
func (s *State) setUsersLocked(m map[ids.UserID]*User) {
	s.users = m
	s.policyUsers = nil
}

// Identity-provider users and their groups.

// ErrIdentityConflict is returned when a login's identity would take over
// a user that belongs to someone else: a user of that name exists and is
// not linked to this identity.
var ErrIdentityConflict = errors.New("user name taken by another user")

// Identity is what an identity provider says about a person at login.
type Identity struct {
	// Provider and ProviderID identify the person at the provider; both
	// are required. For OIDC, Provider is "oidc" and ProviderID the
	// issuer joined with the subject the way Headscale forms it, so that
	// users imported from Headscale are found again.
	Provider   string
	ProviderID string
	// Name is the user name a new user gets (the name of an existing user
	// does not follow the provider; `headscale users rename` changes it).
	Name        string
	DisplayName string
	// Email is the address to store; "" keeps the one stored (pass ""
	// for an address the provider has not verified, as Headscale
	// ignores one).
	Email         string
	ProfilePicURL string
	// Groups is the provider's groups claim, as given (see
	// NormalizeGroups).
	Groups []string
	// LinkLocalUser lets the first login of an identity take over a user
	// of the same name created with the CLI (one with no provider
	// identity). Without it such a login fails with ErrIdentityConflict.
	LinkLocalUser bool
}

// UpsertOIDCUser is what a completed OIDC login calls: it finds the user
// with the identity's provider and provider ID and stores what the
// provider now says about them (display name, e-mail, picture, groups),
// or creates the user (named id.Name) at the first login. It returns the
// user and whether it was created.
//
// A change of groups takes effect here, at login: the policy in force is
// recompiled only if the user's groups changed in a group it names (or
// the user's e-mail changed, or the user is new), and sessions see the
// result as after any user change. An unchanged login writes nothing.
// A new identity whose name is taken gives ErrIdentityConflict unless
// LinkLocalUser allows taking over a CLI-created user of that name.
func (s *State) UpsertOIDCUser(ctx context.Context, id Identity) (*User, bool, error) {
	if id.Provider == "" || id.ProviderID == "" {
		return nil, false, fmt.Errorf("%w: an identity needs its provider and provider ID", ErrInvalidName)
	}
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	want := store.User{DisplayName: id.DisplayName, Email: id.Email, ProfilePicURL: id.ProfilePicURL,
		Provider: id.Provider, ProviderID: id.ProviderID, Groups: NormalizeGroups(id.Groups)}

	cur, err := s.st.GetUserByProvider(ctx, id.Provider, id.ProviderID)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		name := strings.TrimSpace(id.Name)
		if name == "" {
			return nil, false, fmt.Errorf("%w: user name must not be empty", ErrInvalidName)
		}
		local, err := s.st.GetUserByName(ctx, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			want.Name = name
			u, err := s.CreateUser(ctx, want)
			if err != nil {
				return nil, false, fmt.Errorf("creating user %q at first login: %w", name, err)
			}
			s.log.Info("user created at first login", "user", u.ID, "provider", id.Provider)
			return u, true, nil
		case err != nil:
			return nil, false, err
		case local.Provider != "" || local.ProviderID != "":
			return nil, false, fmt.Errorf("%w: user %q belongs to another identity", ErrIdentityConflict, name)
		case !id.LinkLocalUser:
			return nil, false, fmt.Errorf("%w: user %q was created locally and is not linked to this identity", ErrIdentityConflict, name)
		}
		s.log.Info("local user linked to an identity at login", "user", local.ID, "provider", id.Provider)
		cur = local
	default:
		return nil, false, err
	}
	if want.Email == "" {
		want.Email = cur.Email
	}
	if sameIdentity(cur, want) {
		s.mu.Lock()
		u, ok := s.users[cur.ID]
		s.mu.Unlock()
		if ok {
			return u, false, nil
		}
	}
	want.ID = cur.ID
	updated, err := s.st.UpdateUserIdentity(ctx, want)
	if err != nil {
		return nil, false, err
	}
	nu := userFromStore(updated)
	s.applyUser(ctx, nu)
	return nu, false, nil
}

func sameIdentity(u, want store.User) bool {
	return u.DisplayName == want.DisplayName && u.Email == want.Email && u.ProfilePicURL == want.ProfilePicURL &&
		u.Provider == want.Provider && u.ProviderID == want.ProviderID && slices.Equal(u.Groups, want.Groups)
}

// SetUserGroups replaces user id's identity-provider groups (normalised
// by NormalizeGroups) and reports whether they changed. The policy in
// force is recompiled only if a group it names was gained or lost; an
// unchanged set writes and recompiles nothing. ErrNotFound (the store's)
// if there is no such user.
func (s *State) SetUserGroups(ctx context.Context, id ids.UserID, groups []string) (*User, bool, error) {
	groups = NormalizeGroups(groups)
	s.mu.Lock()
	old, ok := s.users[id]
	s.mu.Unlock()
	if ok && slices.Equal(old.Groups, groups) {
		return old, false, nil
	}
	u, err := s.st.SetUserGroups(ctx, id, groups)
	if err != nil {
		return nil, false, err
	}
	nu := userFromStore(u)
	s.applyUser(ctx, nu)
	return nu, true, nil
}

// applyUser puts the stored user nu in force (applyUserLocked) and, when
// that recompiled the policy, applies its autoApprovers to the user's
// nodes: a group that approves routes counts from the login that brought
// it, as it would after a policy reload.
func (s *State) applyUser(ctx context.Context, nu *User) {
	s.mu.Lock()
	var nodes []ids.NodeID
	if s.applyUserLocked(s.users[nu.ID], nu) {
		for _, n := range s.sorted {
			if n.UserID == nu.ID && !n.Tagged() {
				nodes = append(nodes, n.ID)
			}
		}
	}
	s.mu.Unlock()
	if len(nodes) == 0 {
		return
	}
	if err := s.autoApprove(ctx, nodes); err != nil {
		// The login stands; the routes are approved at the next policy
		// reload or when the node advertises again.
		s.log.Warn("applying autoApprovers after a user's groups changed failed", "user", nu.ID, "err", err)
	}
}

// applyUserLocked puts the stored user nu in place of old (nil: not held
// in memory) and does what the change needs: a full recompile when it may
// change what the policy gives anyone (a new user, a new name or e-mail,
// a group the policy names gained or lost), and a UserUpdated when what
// peers show of the user changed.
//
// It reports whether it recompiled.
func (s *State) applyUserLocked(old, nu *User) bool {
	s.setUsersLocked(withUser(s.users, nu))
	relevant := old == nil || old.Name != nu.Name || old.Email != nu.Email || s.pol.NamesIdPGroup(groupsChanged(old.Groups, nu.Groups)...)
	if relevant {
		s.recompileForLocked(nil)
	} else {
		// The policy in force gives nobody anything new, but a policy
		// being checked against the old users (StorePolicy) may name
		// the groups that changed.
		s.policyInputsGen++
	}
	if old != nil && (old.Name != nu.Name || old.DisplayName != nu.DisplayName || old.Email != nu.Email || old.ProfilePicURL != nu.ProfilePicURL) {
		s.emitLocked(Change{Kind: UserUpdated, User: nu})
	}
	s.emitPolicyLocked()
	return relevant && s.pol != nil
}

// groupsChanged returns the groups in exactly one of a and b.
func groupsChanged(a, b []string) []string {
	var out []string
	for _, g := range a {
		if !slices.Contains(b, g) {
			out = append(out, g)
		}
	}
	for _, g := range b {
		if !slices.Contains(a, g) {
			out = append(out, g)
		}
	}
	return out
}

// NormalizeGroups returns an identity provider's groups claim as it is
// stored: surrounding white space trimmed, empty entries dropped, sorted,
// without duplicates (nil for none). Group names are otherwise kept as
// given: case, "/" (Keycloak's paths), "@" (Google's group addresses) and
// inner spaces are significant, and a policy names them the same way.
func NormalizeGroups(groups []string) []string {
	var out []string
	for _, g := range groups {
		if g = strings.TrimSpace(g); g != "" {
			out = append(out, g)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
