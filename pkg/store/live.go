package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// Presence and client reports across servers: a server stores, in
// batches, when its map sessions of nodes begin and end (node_sessions)
// and what the clients reported (the nodes' endpoint, disco key, host
// info, host name and last-seen columns), each with a KindLive record; a
// server that stops or is declared gone leaves with a KindServerGone
// record, its node_sessions rows going with its cluster_servers row.

// More kinds of change-log records (Record.Kind).
const (
	// KindLive: a node's presence on the record's origin server or what
	// its client reported there; Record.Live decodes it.
	KindLive = "live"
	// KindServerGone: a server stopped or was declared dead, and its
	// sessions are gone; Record.ServerGone decodes its ID.
	KindServerGone = "server_gone"
)

// LiveRecord is what a server tells the others about a node connected to
// it, in the store's text forms.
type LiveRecord struct {
	Node ids.NodeID `json:"node"`
	// Online, when set, says the server's first session of the node
	// began (true) or its last ended (false).
	Online *bool `json:"online,omitempty"`
	// At is when it happened: the node's last-seen time.
	At time.Time `json:"at"`
	// ReportedAt is when the client made the report carried (zero:
	// unknown).
	ReportedAt time.Time `json:"reported_at,omitzero"`
	// Cap is the client's capability version.
	Cap int `json:"cap,omitempty"`
	// DiscoKey, Endpoints, Hostinfo and Hostname are as in Node.
	DiscoKey  string   `json:"disco_key,omitempty"`
	Endpoints []string `json:"endpoints,omitempty"`
	Hostinfo  []byte   `json:"hostinfo,omitempty"`
	Hostname  string   `json:"hostname,omitempty"`
}

// liveData is the data of a KindLive record.
type liveData struct {
	V    int        `json:"v"`
	Live LiveRecord `json:"live"`
}

// goneData is the data of a KindServerGone record.
type goneData struct {
	V      int    `json:"v"`
	Server string `json:"server"`
}

// Live decodes a KindLive record.
func (r Record) Live() (LiveRecord, error) {
	var d liveData
	if err := r.decode(KindLive, &d); err != nil {
		return LiveRecord{}, err
	}
	return d.Live, nil
}

// ServerGone decodes a KindServerGone record: the server's ID.
func (r Record) ServerGone() (string, error) {
	var d goneData
	if err := r.decode(KindServerGone, &d); err != nil {
		return "", err
	}
	return d.Server, nil
}

const (
	// qLiveNode writes what a client reported; not a new version of the
	// row (admin edits do not conflict with it).
	qLiveNode = `UPDATE nodes SET disco_key = $2, endpoints = $3, hostinfo = $4, hostname = $5, last_seen = $6 WHERE id = $1`
	// qSessionBegins records the origin's session of a node that still
	// exists (a node deleted meanwhile is skipped).
	qSessionBegins = `INSERT INTO node_sessions (node_id, server_id, since)
SELECT id, $2, $3 FROM nodes WHERE id = $1
ON CONFLICT (node_id, server_id) DO NOTHING`
	qSessionEnds = `DELETE FROM node_sessions WHERE node_id = $1 AND server_id = $2`
)

// AppendLive stores facts from this server (ChangeLogOptions.Origin) in
// one transaction: its sessions of the nodes, their reported columns,
// and a KindLive record each. Facts about nodes deleted meanwhile are
// dropped.
func (s *Store) AppendLive(ctx context.Context, facts []LiveRecord) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	if !s.logging() {
		return fmt.Errorf("append live facts: the change log is off")
	}
	defer s.observe("append_live", time.Now())
	// In node order, so that two servers' batches lock rows in the same
	// order.
	facts = slices.SortedFunc(slices.Values(facts), func(a, b LiveRecord) int { return int(a.Node) - int(b.Node) })
	origin := s.clog.Origin
	return s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		for _, f := range facts {
			eps, err := encodeList(f.Endpoints)
			if err != nil {
				return fmt.Errorf("node %d: %w", f.Node, err)
			}
			res, err := tx.ExecContext(ctx, qLiveNode, dbID(f.Node), f.DiscoKey, eps, nullBytes(f.Hostinfo), f.Hostname, nullMillis(f.At))
			if err != nil {
				return fmt.Errorf("node %d: %w", f.Node, mapErr(err))
			}
			if n, err := res.RowsAffected(); err != nil {
				return fmt.Errorf("node %d: %w", f.Node, err)
			} else if n == 0 {
				continue // deleted meanwhile
			}
			if f.Online != nil {
				q := qSessionEnds
				args := []any{dbID(f.Node), origin}
				if *f.Online {
					q = qSessionBegins
					args = append(args, millis(f.At))
				}
				if _, err := tx.ExecContext(ctx, q, args...); err != nil {
					return fmt.Errorf("node %d session: %w", f.Node, mapErr(err))
				}
			}
			if err := c.add(KindLive, f.Node, 0, liveData{V: recordVersion, Live: f}); err != nil {
				return err
			}
		}
		return nil
	})
}

// LeaveCluster removes server id from the server list, with its sessions,
// and records that it is gone (a clean stop, or a server's previous run
// found at start-up). ErrNotFound when it was not listed.
func (s *Store) LeaveCluster(ctx context.Context, id string) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("leave_cluster", time.Now())
	return s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM cluster_servers WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("removing server %s: %w", id, mapErr(err))
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrNotFound
		}
		return c.add(KindServerGone, 0, 0, goneData{V: recordVersion, Server: id})
	})
}

// DeclareServerGone removes server id, whose lease expired, under the
// jobs lease l: only while l is still held, and only if the server did
// not renew meanwhile. It reports whether it removed it.
func (s *Store) DeclareServerGone(ctx context.Context, id string, l Lease) (bool, error) {
	if err := s.clusterOK(); err != nil {
		return false, err
	}
	defer s.observe("declare_server_gone", time.Now())
	gone := false
	err := s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		gone = false
		res, err := tx.ExecContext(ctx, `DELETE FROM cluster_servers WHERE id = $4 AND expires_at < `+dbNowMS+` AND `+leaseHeld,
			l.Name, l.Holder, l.Epoch, id)
		if err != nil {
			return fmt.Errorf("removing server %s: %w", id, mapErr(err))
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		gone = true
		return c.add(KindServerGone, 0, 0, goneData{V: recordVersion, Server: id})
	})
	return gone, err
}

// NodeSessions returns, per node, the live servers holding a session of
// it.
func (s *Store) NodeSessions(ctx context.Context) (map[ids.NodeID][]string, error) {
	if err := s.clusterOK(); err != nil {
		return nil, err
	}
	rows, err := s.read.QueryContext(ctx, `SELECT ns.node_id, ns.server_id FROM node_sessions ns
JOIN cluster_servers cs ON cs.id = ns.server_id WHERE cs.expires_at > `+dbNowMS+` ORDER BY ns.node_id, ns.server_id`)
	if err != nil {
		return nil, fmt.Errorf("listing sessions: %w", mapErr(err))
	}
	defer rows.Close()
	out := make(map[ids.NodeID][]string)
	for rows.Next() {
		var node int64
		var srv string
		if err := rows.Scan(&node, &srv); err != nil {
			return nil, fmt.Errorf("listing sessions: %w", mapErr(err))
		}
		out[ids.NodeID(node)] = append(out[ids.NodeID(node)], srv)
	}
	return out, rows.Err()
}

// KindPrimary: the jobs leader chose a subnet route's primary router (or
// none); Record.Primary decodes it.
const KindPrimary = "primary"

// primaryData is the data of a KindPrimary record.
type primaryData struct {
	V      int    `json:"v"`
	Prefix string `json:"prefix"`
	Node   uint64 `json:"node,omitempty"`
}

// Primary decodes a KindPrimary record (NodeID 0: the route has no
// primary).
func (r Record) Primary() (RoutePrimary, error) {
	var d primaryData
	if err := r.decode(KindPrimary, &d); err != nil {
		return RoutePrimary{}, err
	}
	p, err := netip.ParsePrefix(d.Prefix)
	if err != nil {
		return RoutePrimary{}, fmt.Errorf("change %d: %w", r.Seq, err)
	}
	return RoutePrimary{Prefix: p, NodeID: ids.NodeID(d.Node)}, nil
}

// SetPrimaries stores the jobs leader's choices of primary routers (NodeID
// 0: none) in order, with a KindPrimary record each, only while lease l is
// still held: a leader that lost the lease without noticing decides
// nothing. It reports whether it stored them. A choice of a node deleted
// meanwhile is dropped.
func (s *Store) SetPrimaries(ctx context.Context, l Lease, choices []RoutePrimary) (bool, error) {
	if err := s.clusterOK(); err != nil {
		return false, err
	}
	if !s.logging() {
		return false, fmt.Errorf("set primaries: the change log is off")
	}
	defer s.observe("set_primaries", time.Now())
	held := false
	err := s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		if err := tx.QueryRowContext(ctx, `SELECT `+leaseHeld+` FROM cluster_leases WHERE name = $1 FOR SHARE`, l.Name, l.Holder, l.Epoch).Scan(&held); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				held = false
				return nil
			}
			return fmt.Errorf("checking lease %s: %w", l.Name, mapErr(err))
		}
		if !held {
			return nil
		}
		for _, p := range choices {
			if p.NodeID == 0 {
				if _, err := tx.ExecContext(ctx, `DELETE FROM route_primaries WHERE prefix = $1`, p.Prefix.String()); err != nil {
					return fmt.Errorf("route %s: %w", p.Prefix, mapErr(err))
				}
			} else {
				res, err := tx.ExecContext(ctx, `INSERT INTO route_primaries (prefix, node_id) SELECT $1, id FROM nodes WHERE id = $2
ON CONFLICT (prefix) DO UPDATE SET node_id = excluded.node_id`, p.Prefix.String(), dbID(p.NodeID))
				if err != nil {
					return fmt.Errorf("route %s: %w", p.Prefix, mapErr(err))
				}
				if n, err := res.RowsAffected(); err != nil || n == 0 {
					continue // the node is gone
				}
			}
			if err := c.add(KindPrimary, p.NodeID, 0, primaryData{V: recordVersion, Prefix: p.Prefix.String(), Node: uint64(p.NodeID)}); err != nil {
				return err
			}
		}
		return nil
	})
	return held && err == nil, err
}
