package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// PreAuthKey lets a machine register without interactive login. Only the
// public prefix and a hash of the secret are stored.
type PreAuthKey struct {
	ID ids.PreAuthKeyID
	// Prefix is the public part shown in listings and used to look the
	// key up; unique.
	Prefix string
	// Hash is the SHA-256 of the secret part, computed by the server, or
	// a bcrypt hash of it copied from Headscale 0.28+ (see pkg/authkey);
	// stored as lowercase hex.
	Hash []byte
	// Legacy marks a key Headscale up to 0.27 handed out as 48 plain hex
	// characters (imported): Prefix is its first 12 characters and Hash the
	// SHA-256 of the other 36 (authkey.LegacyAuth). Only listings differ.
	Legacy bool
	// UserID owns the key and the nodes it registers; nil for tags-only
	// keys.
	UserID    *ids.UserID
	Reusable  bool
	Ephemeral bool
	Used      bool
	Tags      []string
	// Expiration is when the key stops working; zero means never.
	Expiration time.Time
	CreatedAt  time.Time
}

func scanPreAuthKey(sc scanner) (PreAuthKey, error) {
	var (
		k          PreAuthKey
		id, ctd    int64
		hash, tags string
		userID     sql.NullInt64
		exp        sql.NullInt64
	)
	if err := sc.Scan(&id, &k.Prefix, &hash, &userID, &k.Reusable, &k.Ephemeral, &k.Used, &tags, &exp, &ctd, &k.Legacy); err != nil {
		return PreAuthKey{}, mapErr(err)
	}
	var err error
	if k.Hash, err = decodeHash(hash); err != nil {
		return PreAuthKey{}, err
	}
	if k.Tags, err = decodeList(tags); err != nil {
		return PreAuthKey{}, err
	}
	k.ID = ids.PreAuthKeyID(id)
	k.UserID = idPtr[ids.UserID](userID)
	k.Expiration = fromNullMillis(exp)
	k.CreatedAt = fromMillis(ctd)
	return k, nil
}

// CreatePreAuthKey inserts k (ID assigned; zero CreatedAt means now) and
// returns the stored row. Prefix and Hash are stored as given, so a key
// imported from Headscale (a bcrypt hash, or a legacy key's
// authkey.LegacyAuth form with Legacy set) is inserted this way too. A duplicate prefix is ErrConflict; an unknown
// UserID is ErrNotFound.
func (s *Store) CreatePreAuthKey(ctx context.Context, k PreAuthKey) (PreAuthKey, error) {
	defer s.observe("create_pre_auth_key", time.Now())
	tags, err := encodeList(k.Tags)
	if err != nil {
		return PreAuthKey{}, fmt.Errorf("create pre-auth key %q: %w", k.Prefix, err)
	}
	row := s.write.QueryRowContext(ctx, qInsertPreAuthKey,
		k.Prefix, encodeHash(k.Hash), nullID(k.UserID), k.Reusable, k.Ephemeral, k.Used, tags,
		nullMillis(k.Expiration), millis(orNow(k.CreatedAt)), k.Legacy)
	out, err := scanPreAuthKey(row)
	if err != nil {
		return PreAuthKey{}, fmt.Errorf("create pre-auth key %q: %w", k.Prefix, err)
	}
	return out, nil
}

// GetPreAuthKey returns the key with the given id, or ErrNotFound.
func (s *Store) GetPreAuthKey(ctx context.Context, id ids.PreAuthKeyID) (PreAuthKey, error) {
	defer s.observe("get_pre_auth_key", time.Now())
	k, err := scanPreAuthKey(s.read.QueryRowContext(ctx, qGetPreAuthKey, dbID(id)))
	if err != nil {
		return PreAuthKey{}, fmt.Errorf("get pre-auth key %d: %w", id, err)
	}
	return k, nil
}

// GetPreAuthKeyByPrefix returns the key with the given public prefix, or
// ErrNotFound; registration looks keys up this way before checking the
// hash.
func (s *Store) GetPreAuthKeyByPrefix(ctx context.Context, prefix string) (PreAuthKey, error) {
	defer s.observe("get_pre_auth_key_by_prefix", time.Now())
	k, err := scanPreAuthKey(s.read.QueryRowContext(ctx, qGetPreAuthKeyByPrefix, prefix))
	if err != nil {
		return PreAuthKey{}, fmt.Errorf("get pre-auth key %q: %w", prefix, err)
	}
	return k, nil
}

// ListPreAuthKeys returns every pre-auth key ordered by id.
func (s *Store) ListPreAuthKeys(ctx context.Context) ([]PreAuthKey, error) {
	defer s.observe("list_pre_auth_keys", time.Now())
	rows, err := s.read.QueryContext(ctx, qListPreAuthKeys)
	if err != nil {
		return nil, fmt.Errorf("list pre-auth keys: %w", err)
	}
	defer rows.Close()
	var out []PreAuthKey
	for rows.Next() {
		k, err := scanPreAuthKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list pre-auth keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list pre-auth keys: %w", err)
	}
	return out, nil
}

// ExpirePreAuthKey sets the key's expiration to at (the CLI's "expire"
// passes now); ErrNotFound if there is no such key.
func (s *Store) ExpirePreAuthKey(ctx context.Context, id ids.PreAuthKeyID, at time.Time) error {
	defer s.observe("expire_pre_auth_key", time.Now())
	if err := s.execOne(ctx, qExpirePreAuthKey, nullMillis(at), dbID(id)); err != nil {
		return fmt.Errorf("expire pre-auth key %d: %w", id, err)
	}
	return nil
}

// DeletePreAuthKey removes a key; nodes registered with it keep working
// (their AuthKeyID becomes nil). ErrNotFound if there is no such key.
// With the change log on, those nodes are written (a new version) and
// recorded.
func (s *Store) DeletePreAuthKey(ctx context.Context, id ids.PreAuthKeyID) error {
	defer s.observe("delete_pre_auth_key", time.Now())
	err := s.logOne(ctx, func(q dbtx, c *changes) error {
		if c.on {
			if err := unlinkKeyNodes(ctx, q, c, qUnlinkKeyNodes, dbID(id)); err != nil {
				return err
			}
		}
		return execOne(ctx, q, qDeletePreAuthKey, dbID(id))
	})
	if err != nil {
		return fmt.Errorf("delete pre-auth key %d: %w", id, err)
	}
	return nil
}

// useKey marks a single-use key used inside tx, failing with ErrKeyUsed if
// it already was and ErrNotFound if it does not exist.
func useKey(ctx context.Context, tx *sql.Tx, id ids.PreAuthKeyID) error {
	res, err := tx.ExecContext(ctx, qUsePreAuthKey, dbID(id))
	if err != nil {
		return fmt.Errorf("mark pre-auth key %d used: %w", id, mapErr(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("mark pre-auth key %d used: %w", id, err)
	}
	if n == 1 {
		return nil
	}
	var exists int
	if err := tx.QueryRowContext(ctx, qPreAuthKeyExists, dbID(id)).Scan(&exists); err != nil {
		return fmt.Errorf("mark pre-auth key %d used: %w", id, mapErr(err))
	}
	if exists == 0 {
		return fmt.Errorf("mark pre-auth key %d used: %w", id, ErrNotFound)
	}
	return &kindError{msg: fmt.Sprintf("pre-auth key %d already used", id), kind: ErrKeyUsed}
}

// rehashKey applies r inside tx; a key whose hash is no longer r.From (or
// that is gone) is left as it is.
func rehashKey(ctx context.Context, tx *sql.Tx, r Rehash) error {
	if _, err := tx.ExecContext(ctx, qRehashPreAuthKey, encodeHash(r.To), dbID(r.Key), encodeHash(r.From)); err != nil {
		return fmt.Errorf("rehash pre-auth key %d: %w", r.Key, mapErr(err))
	}
	return nil
}
