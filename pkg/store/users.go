package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// User is a namespace owning nodes and pre-auth keys; it is created by the
// CLI or, later, by OIDC login.
type User struct {
	ID            ids.UserID
	Name          string
	DisplayName   string
	Email         string
	ProfilePicURL string
	// Provider and ProviderID identify an OIDC identity; both are "" for
	// users created with the CLI.
	Provider   string
	ProviderID string
	// Groups are the groups the identity provider put the user in at the
	// last login (its groups claim), stored as given; nil for none and
	// for users created with the CLI.
	Groups    []string
	CreatedAt time.Time
	// Version is the row's version: 1 when created, one more with every
	// change since. The store sets it.
	Version int64
}

func scanUser(sc scanner) (User, error) {
	var (
		u       User
		id, ctd int64
		groups  string
	)
	if err := sc.Scan(&id, &u.Name, &u.DisplayName, &u.Email, &u.ProfilePicURL, &u.Provider, &u.ProviderID, &groups, &ctd, &u.Version); err != nil {
		return User{}, mapErr(err)
	}
	u.ID = ids.UserID(id)
	u.CreatedAt = fromMillis(ctd)
	var err error
	if u.Groups, err = decodeList(groups); err != nil {
		return User{}, fmt.Errorf("user %d provider groups: %w", id, err)
	}
	return u, nil
}

// CreateUser inserts u (its ID is assigned; a zero CreatedAt means now) and
// returns the stored row. A duplicate name is ErrConflict.
func (s *Store) CreateUser(ctx context.Context, u User) (User, error) {
	defer s.observe("create_user", time.Now())
	groups, err := encodeList(u.Groups)
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", u.Name, err)
	}
	out, err := s.writeUser(ctx, qInsertUser,
		u.Name, u.DisplayName, u.Email, u.ProfilePicURL, u.Provider, u.ProviderID, groups, millis(orNow(u.CreatedAt)))
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", u.Name, err)
	}
	return out, nil
}

// writeUser runs query, a single statement returning the user's row, and
// returns the user as stored (with the change log on, with its record).
func (s *Store) writeUser(ctx context.Context, query string, args ...any) (User, error) {
	var out User
	err := s.logOne(ctx, func(q dbtx, c *changes) error {
		var err error
		if out, err = scanUser(q.QueryRowContext(ctx, query, args...)); err != nil {
			return err
		}
		return c.user(out)
	})
	return out, err
}

// GetUser returns the user with the given id, or ErrNotFound.
func (s *Store) GetUser(ctx context.Context, id ids.UserID) (User, error) {
	defer s.observe("get_user", time.Now())
	u, err := scanUser(s.read.QueryRowContext(ctx, qGetUser, dbID(id)))
	if err != nil {
		return User{}, fmt.Errorf("get user %d: %w", id, err)
	}
	return u, nil
}

// GetUserByName returns the user with the given name, or ErrNotFound; the
// CLI addresses users by name.
func (s *Store) GetUserByName(ctx context.Context, name string) (User, error) {
	defer s.observe("get_user_by_name", time.Now())
	u, err := scanUser(s.read.QueryRowContext(ctx, qGetUserByName, name))
	if err != nil {
		return User{}, fmt.Errorf("get user %q: %w", name, err)
	}
	return u, nil
}

// GetUserByProvider returns the user with the given provider identity
// (provider and providerID both set), or ErrNotFound; an OIDC login finds
// its user this way. Should several users share it (an old import), the
// oldest is returned.
func (s *Store) GetUserByProvider(ctx context.Context, provider, providerID string) (User, error) {
	defer s.observe("get_user_by_provider", time.Now())
	if provider == "" || providerID == "" {
		return User{}, fmt.Errorf("get user by provider identity: %w", &kindError{msg: "provider and provider ID must both be set", kind: ErrNotFound})
	}
	u, err := scanUser(s.read.QueryRowContext(ctx, qGetUserByProvider, provider, providerID))
	if err != nil {
		return User{}, fmt.Errorf("get user by provider identity: %w", err)
	}
	return u, nil
}

// UpdateUserIdentity replaces what the identity provider says about user
// u.ID (display name, e-mail, picture, provider, provider ID and groups)
// and returns the updated user; the name and creation time stay.
// ErrNotFound if there is no such user.
func (s *Store) UpdateUserIdentity(ctx context.Context, u User) (User, error) {
	defer s.observe("update_user_identity", time.Now())
	groups, err := encodeList(u.Groups)
	if err != nil {
		return User{}, fmt.Errorf("update user %d: %w", u.ID, err)
	}
	out, err := s.writeUser(ctx, qUpdateUserIdentity,
		u.DisplayName, u.Email, u.ProfilePicURL, u.Provider, u.ProviderID, groups, dbID(u.ID))
	if err != nil {
		return User{}, fmt.Errorf("update user %d: %w", u.ID, err)
	}
	return out, nil
}

// SetUserGroups replaces user id's identity-provider groups and returns
// the updated user; ErrNotFound if there is no such user.
func (s *Store) SetUserGroups(ctx context.Context, id ids.UserID, groups []string) (User, error) {
	defer s.observe("set_user_groups", time.Now())
	enc, err := encodeList(groups)
	if err != nil {
		return User{}, fmt.Errorf("set groups of user %d: %w", id, err)
	}
	u, err := s.writeUser(ctx, qSetUserGroups, enc, dbID(id))
	if err != nil {
		return User{}, fmt.Errorf("set groups of user %d: %w", id, err)
	}
	return u, nil
}

// ListUsers returns every user ordered by id.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	defer s.observe("list_users", time.Now())
	rows, err := s.read.QueryContext(ctx, qListUsers)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// RenameUser changes a user's name and returns the updated user;
// ErrNotFound if there is no such user, ErrConflict if the name is taken.
func (s *Store) RenameUser(ctx context.Context, id ids.UserID, newName string) (User, error) {
	defer s.observe("rename_user", time.Now())
	u, err := s.writeUser(ctx, qRenameUser, newName, dbID(id))
	if err != nil {
		return User{}, fmt.Errorf("rename user %d to %q: %w", id, newName, err)
	}
	return u, nil
}

// DeleteUser removes a user and its pre-auth keys. A user that still owns
// nodes is not deleted (ErrConflict): its nodes must be deleted or moved
// first.
func (s *Store) DeleteUser(ctx context.Context, id ids.UserID) error {
	defer s.observe("delete_user", time.Now())
	err := s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		var locked int64
		if err := tx.QueryRowContext(ctx, qLockUser+s.d.forUpdate, dbID(id)).Scan(&locked); err != nil {
			return mapErr(err)
		}
		var nodes int
		if err := tx.QueryRowContext(ctx, qCountUserNodes, dbID(id)).Scan(&nodes); err != nil {
			return mapErr(err)
		}
		if nodes > 0 {
			noun := "nodes"
			if nodes == 1 {
				noun = "node"
			}
			return &kindError{msg: fmt.Sprintf("user still owns %d %s", nodes, noun), kind: ErrConflict}
		}
		// Tagged nodes registered with the user's keys lose their link
		// to them (the foreign key's ON DELETE SET NULL): recorded, the
		// other servers forget it too.
		if c.on {
			if err := unlinkKeyNodes(ctx, tx, c, qUnlinkUserKeyNodes, dbID(id)); err != nil {
				return err
			}
		}
		// The foreign key cascades too; deleting explicitly keeps the
		// behaviour independent of foreign_keys being enabled.
		if _, err := tx.ExecContext(ctx, qDeleteUserKeys, dbID(id)); err != nil {
			return fmt.Errorf("delete pre-auth keys: %w", mapErr(err))
		}
		if _, err := tx.ExecContext(ctx, qDeleteUser, dbID(id)); err != nil {
			return mapErr(err)
		}
		return c.userDeleted(id)
	})
	if err != nil {
		return fmt.Errorf("delete user %d: %w", id, err)
	}
	return nil
}
