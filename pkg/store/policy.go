package store

import (
	"context"
	"fmt"
	"time"
)

// SetPolicy stores data (HuJSON text) as the current policy. Earlier
// versions are kept as history; GetPolicy returns the newest.
func (s *Store) SetPolicy(ctx context.Context, data string) error {
	defer s.observe("set_policy", time.Now())
	if _, err := s.write.ExecContext(ctx, qInsertPolicy, data, millis(nowMillis())); err != nil {
		return fmt.Errorf("set policy: %w", mapErr(err))
	}
	return nil
}

// GetPolicy returns the most recently stored policy and when it was stored,
// or ErrNotFound when none has been set (the server then uses its file or
// an allow-all default).
func (s *Store) GetPolicy(ctx context.Context) (data string, updatedAt time.Time, err error) {
	defer s.observe("get_policy", time.Now())
	var ms int64
	if err := s.read.QueryRowContext(ctx, qGetPolicy).Scan(&data, &ms); err != nil {
		return "", time.Time{}, fmt.Errorf("get policy: %w", mapErr(err))
	}
	return data, fromMillis(ms), nil
}
