package store

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// RouteID is the stable ID of one (node, prefix) pair (table route_ids),
// for the routes verbs of Headscale 0.23–0.25.
type RouteID struct {
	ID        ids.RouteID
	NodeID    ids.NodeID
	Prefix    netip.Prefix
	CreatedAt time.Time
}

// RouteKey names a (node, prefix) pair that needs an ID.
type RouteKey struct {
	NodeID ids.NodeID
	Prefix netip.Prefix
}

const (
	routeIDCols   = `id, node_id, prefix, created_at`
	qListRouteIDs = `SELECT ` + routeIDCols + ` FROM route_ids ORDER BY id`
	qGetRouteID   = `SELECT ` + routeIDCols + ` FROM route_ids WHERE id = $1`
	// qInsertRouteID adds a pair unless it has a row: a pair that has one
	// is never even tried, so it does not use up an ID from the sequence
	// (ON CONFLICT DO NOTHING would). The casts give the parameters their
	// types on PostgreSQL too.
	qInsertRouteID = `INSERT INTO route_ids (node_id, prefix, created_at)
SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), CAST($3 AS BIGINT)
WHERE NOT EXISTS (SELECT 1 FROM route_ids WHERE node_id = CAST($1 AS BIGINT) AND prefix = CAST($2 AS TEXT))`
	qDeleteRouteIDs = `DELETE FROM route_ids WHERE node_id = $1 AND prefix = $2`
)

func scanRouteID(sc scanner) (RouteID, error) {
	var (
		r           RouteID
		id, nid, at int64
		prefix      string
	)
	if err := sc.Scan(&id, &nid, &prefix, &at); err != nil {
		return RouteID{}, mapErr(err)
	}
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return RouteID{}, fmt.Errorf("route %d: prefix %q: %w", id, prefix, err)
	}
	r.ID, r.NodeID, r.Prefix, r.CreatedAt = ids.RouteID(id), ids.NodeID(nid), p, fromMillis(at)
	return r, nil
}

// ListRouteIDs returns every route ID, by ID.
func (s *Store) ListRouteIDs(ctx context.Context) ([]RouteID, error) {
	defer s.observe("list_route_ids", time.Now())
	rows, err := s.read.QueryContext(ctx, qListRouteIDs)
	if err != nil {
		return nil, fmt.Errorf("list route ids: %w", mapErr(err))
	}
	defer rows.Close()
	var out []RouteID
	for rows.Next() {
		r, err := scanRouteID(rows)
		if err != nil {
			return nil, fmt.Errorf("list route ids: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list route ids: %w", mapErr(err))
	}
	return out, nil
}

// GetRouteID returns the route with the given ID, or ErrNotFound.
func (s *Store) GetRouteID(ctx context.Context, id ids.RouteID) (RouteID, error) {
	defer s.observe("get_route_id", time.Now())
	r, err := scanRouteID(s.read.QueryRowContext(ctx, qGetRouteID, dbID(id)))
	if err != nil {
		return RouteID{}, fmt.Errorf("get route %d: %w", id, err)
	}
	return r, nil
}

// AddRouteIDs gives an ID to each pair that has none yet, in one
// transaction; pairs that have one keep it. A pair of a node that no
// longer exists is a foreign-key error (ErrNotFound), and nothing is
// added.
func (s *Store) AddRouteIDs(ctx context.Context, keys []RouteKey) error {
	if len(keys) == 0 {
		return nil
	}
	defer s.observe("add_route_ids", time.Now())
	now := millis(nowMillis())
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := s.d.begin(ctx, tx, "route_ids"); err != nil {
			return err
		}
		for _, k := range keys {
			if _, err := tx.ExecContext(ctx, qInsertRouteID, dbID(k.NodeID), k.Prefix.String(), now); err != nil {
				return mapErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add route ids: %w", err)
	}
	return nil
}

// DeleteRouteIDs forgets the IDs of the given pairs (missing ones are
// ignored), in one transaction.
func (s *Store) DeleteRouteIDs(ctx context.Context, keys []RouteKey) error {
	defer s.observe("delete_route_ids", time.Now())
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		for _, k := range keys {
			if _, err := tx.ExecContext(ctx, qDeleteRouteIDs, dbID(k.NodeID), k.Prefix.String()); err != nil {
				return mapErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete route ids: %w", err)
	}
	return nil
}
