package store

import (
	"context"
	"fmt"
	"time"
)

// SetPolicy stores data (HuJSON text) as the current policy. Earlier
// versions are kept as history; GetPolicy returns the newest.
func (s *Store) SetPolicy(ctx context.Context, data string) error {
	_, _, err := s.InsertPolicy(ctx, data)
	return err
}

// InsertPolicy stores data (HuJSON text) as the current policy, like
// SetPolicy, and returns the row's id (for DeletePolicy) and the time it
// was stored (as GetPolicy will report it).
func (s *Store) InsertPolicy(ctx context.Context, data string) (id int64, updatedAt time.Time, err error) {
	defer s.observe("set_policy", time.Now())
	updatedAt = nowMillis()
	err = s.logOne(ctx, func(q dbtx, c *changes) error {
		if err := q.QueryRowContext(ctx, qInsertPolicy, data, millis(updatedAt)).Scan(&id); err != nil {
			return mapErr(err)
		}
		return c.policy(id, false)
	})
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("set policy: %w", err)
	}
	return id, updatedAt, nil
}

// DeletePolicy removes the policy row id that InsertPolicy returned, so the
// one stored before it is the current policy again (the rollback of a
// policy that could not be put in force). A missing row is not an error.
func (s *Store) DeletePolicy(ctx context.Context, id int64) error {
	defer s.observe("delete_policy", time.Now())
	err := s.logOne(ctx, func(q dbtx, c *changes) error {
		res, err := q.ExecContext(ctx, qDeletePolicy, id)
		if err != nil {
			return mapErr(err)
		}
		if !c.on {
			return nil
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // nothing deleted, nothing to record
		}
		return c.policy(id, true)
	})
	if err != nil {
		return fmt.Errorf("delete policy %d: %w", id, err)
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
