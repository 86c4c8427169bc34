package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// Snapshot is what a server loads at start-up when it shares the database
// with others: the tailnet as of change-log record Seq. Reading the log
// after Seq (ReadChanges) then gives every later write once.
type Snapshot struct {
	// Seq is the change log's head when the snapshot was read: every
	// record up to it is reflected below, none after it.
	Seq int64
	// Users and Nodes are every row, by ID.
	Users []User
	Nodes []Node
	// Policy is the newest stored policy; nil when none was stored.
	Policy *PolicyRecord
	// Sessions are the map sessions of servers whose lease had not
	// expired by the database's clock (PostgreSQL; none on SQLite).
	Sessions []NodeSession
	// Primaries are the primary routers the jobs leader chose, by
	// prefix.
	Primaries []RoutePrimary
}

// NodeSession is a row of node_sessions: a server holding a map session
// of a node.
type NodeSession struct {
	NodeID   ids.NodeID
	ServerID string
	Since    time.Time
}

// RoutePrimary is a row of route_primaries: the node serving a subnet
// route to its peers.
type RoutePrimary struct {
	Prefix netip.Prefix
	NodeID ids.NodeID
}

const (
	qSnapshotPolicy   = `SELECT id, data, updated_at FROM policies ORDER BY id DESC LIMIT 1`
	qSnapshotSessions = `SELECT s.node_id, s.server_id, s.since FROM node_sessions s JOIN cluster_servers c ON c.id = s.server_id
WHERE c.expires_at > CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) ORDER BY s.node_id, s.server_id`
	qSnapshotPrimaries = `SELECT prefix, node_id FROM route_primaries ORDER BY prefix`
)

// LoadSnapshot reads the change log's head, every user and node, the
// newest policy, the live sessions and the primary routes in one
// transaction that sees one moment of the database (PostgreSQL:
// REPEATABLE READ READ ONLY; SQLite: one read transaction).
func (s *Store) LoadSnapshot(ctx context.Context) (Snapshot, error) {
	defer s.observe("load_snapshot", time.Now())
	snap, err := s.loadSnapshot(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("load snapshot: %w", err)
	}
	return snap, nil
}

func (s *Store) loadSnapshot(ctx context.Context) (Snapshot, error) {
	var txo *sql.TxOptions
	if s.d == postgresDialect {
		txo = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := s.read.BeginTx(ctx, txo)
	if err != nil {
		return Snapshot{}, fmt.Errorf("begin: %w", mapErr(err))
	}
	defer tx.Rollback()
	var snap Snapshot
	// The first statement fixes the snapshot, on both engines.
	if err := tx.QueryRowContext(ctx, qChangeLogHead).Scan(&snap.Seq); err != nil {
		return Snapshot{}, fmt.Errorf("change log head: %w", mapErr(err))
	}
	if snap.Users, err = queryAll(ctx, tx, qListUsers, scanUser); err != nil {
		return Snapshot{}, fmt.Errorf("users: %w", err)
	}
	if snap.Nodes, err = queryAll(ctx, tx, qListNodes, scanNode); err != nil {
		return Snapshot{}, fmt.Errorf("nodes: %w", err)
	}
	var p PolicyRecord
	var at int64
	switch err := tx.QueryRowContext(ctx, qSnapshotPolicy).Scan(&p.ID, &p.Data, &at); {
	case err == nil:
		p.UpdatedAt = fromMillis(at)
		snap.Policy = &p
	case !errors.Is(err, sql.ErrNoRows):
		return Snapshot{}, fmt.Errorf("policy: %w", mapErr(err))
	}
	if s.d == postgresDialect {
		snap.Sessions, err = queryAll(ctx, tx, qSnapshotSessions, func(sc scanner) (NodeSession, error) {
			var ns NodeSession
			var node, since int64
			if err := sc.Scan(&node, &ns.ServerID, &since); err != nil {
				return NodeSession{}, mapErr(err)
			}
			ns.NodeID, ns.Since = ids.NodeID(node), fromMillis(since)
			return ns, nil
		})
		if err != nil {
			return Snapshot{}, fmt.Errorf("node sessions: %w", err)
		}
	}
	snap.Primaries, err = queryAll(ctx, tx, qSnapshotPrimaries, func(sc scanner) (RoutePrimary, error) {
		var rp RoutePrimary
		var prefix string
		var node int64
		if err := sc.Scan(&prefix, &node); err != nil {
			return RoutePrimary{}, mapErr(err)
		}
		p, err := netip.ParsePrefix(prefix)
		if err != nil {
			return RoutePrimary{}, fmt.Errorf("primary route %q: %w", prefix, err)
		}
		rp.Prefix, rp.NodeID = p, ids.NodeID(node)
		return rp, nil
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("primary routes: %w", err)
	}
	return snap, nil
}

// querier is what queryAll reads from: a transaction or a pool.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryAll runs query with args on q and scans every row with scan.
func queryAll[T any](ctx context.Context, q querier, query string, scan func(scanner) (T, error), args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}
