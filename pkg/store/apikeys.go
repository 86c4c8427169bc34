package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// APIKey authenticates the remote admin API. Only the public prefix and a
// hash of the secret are stored.
type APIKey struct {
	ID ids.APIKeyID
	// Prefix is the public part used to look the key up; unique.
	Prefix string
	// Hash is the SHA-256 of the secret part, computed by the server, or a
	// bcrypt hash of it copied from Headscale (see pkg/authkey); stored as
	// lowercase hex.
	Hash []byte
	// Expiration is when the key stops working; zero means never.
	Expiration time.Time
	// LastSeen is when the key was last used; zero means never.
	LastSeen  time.Time
	CreatedAt time.Time
}

func scanAPIKey(sc scanner) (APIKey, error) {
	var (
		k         APIKey
		id, ctd   int64
		hash      string
		exp, seen sql.NullInt64
	)
	if err := sc.Scan(&id, &k.Prefix, &hash, &exp, &seen, &ctd); err != nil {
		return APIKey{}, mapErr(err)
	}
	var err error
	if k.Hash, err = decodeHash(hash); err != nil {
		return APIKey{}, err
	}
	k.ID = ids.APIKeyID(id)
	k.Expiration = fromNullMillis(exp)
	k.LastSeen = fromNullMillis(seen)
	k.CreatedAt = fromMillis(ctd)
	return k, nil
}

// CreateAPIKey inserts k (ID assigned; zero CreatedAt means now) and returns
// the stored row; a duplicate prefix is ErrConflict. Prefix and Hash are
// stored as given, so a key imported from Headscale (a 7- or 12-character
// prefix and a bcrypt hash) is inserted this way too.
func (s *Store) CreateAPIKey(ctx context.Context, k APIKey) (APIKey, error) {
	defer s.observe("create_api_key", time.Now())
	row := s.write.QueryRowContext(ctx, qInsertAPIKey,
		k.Prefix, encodeHash(k.Hash), nullMillis(k.Expiration), nullMillis(k.LastSeen), millis(orNow(k.CreatedAt)))
	out, err := scanAPIKey(row)
	if err != nil {
		return APIKey{}, fmt.Errorf("create api key %q: %w", k.Prefix, err)
	}
	return out, nil
}

// GetAPIKeyByPrefix returns the key with the given prefix, or ErrNotFound;
// API authentication looks keys up this way before checking the hash.
func (s *Store) GetAPIKeyByPrefix(ctx context.Context, prefix string) (APIKey, error) {
	defer s.observe("get_api_key_by_prefix", time.Now())
	k, err := scanAPIKey(s.read.QueryRowContext(ctx, qGetAPIKeyByPrefix, prefix))
	if err != nil {
		return APIKey{}, fmt.Errorf("get api key %q: %w", prefix, err)
	}
	return k, nil
}

// GetAPIKey returns the key with the given id, or ErrNotFound.
func (s *Store) GetAPIKey(ctx context.Context, id ids.APIKeyID) (APIKey, error) {
	defer s.observe("get_api_key", time.Now())
	k, err := scanAPIKey(s.read.QueryRowContext(ctx, qGetAPIKey, dbID(id)))
	if err != nil {
		return APIKey{}, fmt.Errorf("get api key %d: %w", id, err)
	}
	return k, nil
}

// ListAPIKeys returns every API key ordered by id.
func (s *Store) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	defer s.observe("list_api_keys", time.Now())
	rows, err := s.read.QueryContext(ctx, qListAPIKeys)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	var out []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list api keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return out, nil
}

// ExpireAPIKey sets the key's expiration to at; ErrNotFound if there is no
// such key.
func (s *Store) ExpireAPIKey(ctx context.Context, id ids.APIKeyID, at time.Time) error {
	defer s.observe("expire_api_key", time.Now())
	if err := s.execOne(ctx, qExpireAPIKey, nullMillis(at), dbID(id)); err != nil {
		return fmt.Errorf("expire api key %d: %w", id, err)
	}
	return nil
}

// DeleteAPIKey removes a key; ErrNotFound if there is no such key.
func (s *Store) DeleteAPIKey(ctx context.Context, id ids.APIKeyID) error {
	defer s.observe("delete_api_key", time.Now())
	if err := s.execOne(ctx, qDeleteAPIKey, dbID(id)); err != nil {
		return fmt.Errorf("delete api key %d: %w", id, err)
	}
	return nil
}

// TouchAPIKey records that the key was used at at; ErrNotFound if there is
// no such key.
func (s *Store) TouchAPIKey(ctx context.Context, id ids.APIKeyID, at time.Time) error {
	defer s.observe("touch_api_key", time.Now())
	if err := s.execOne(ctx, qTouchAPIKey, nullMillis(at), dbID(id)); err != nil {
		return fmt.Errorf("touch api key %d: %w", id, err)
	}
	return nil
}

// RehashAPIKey replaces the key's stored hash from by to, if it is still
// from: after a key imported from Headscale with a bcrypt hash was checked,
// its hash becomes the server's SHA-256 of the same secret, so bcrypt runs
// once per key. A key whose hash changed meanwhile, or that is gone, is left
// alone without error.
func (s *Store) RehashAPIKey(ctx context.Context, id ids.APIKeyID, from, to []byte) error {
	defer s.observe("rehash_api_key", time.Now())
	if _, err := s.write.ExecContext(ctx, qRehashAPIKey, encodeHash(to), dbID(id), encodeHash(from)); err != nil {
		return fmt.Errorf("rehash api key %d: %w", id, mapErr(err))
	}
	return nil
}
