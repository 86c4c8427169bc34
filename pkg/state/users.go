package state

import (
	"context"
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
	s.users = withUser(s.users, nu)
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
	s.users = withUser(s.users, nu)
	s.recompileForLocked(nil)
	s.emitLocked(Change{Kind: UserUpdated, User: nu})
	s.emitPolicyLocked()
	return nu, nil
}

// DeleteUser removes a user that owns no nodes.
func (s *State) DeleteUser(ctx context.Context, id ids.UserID) error {
	if err := s.st.DeleteUser(ctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[ids.UserID]*User, len(s.users))
	for k, v := range s.users {
		if k != id {
			m[k] = v
		}
	}
	s.users = m
	s.recompileForLocked(nil)
	s.emitPolicyLocked()
	return nil
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
