package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// Node is the durable part of a registered machine. Live state (sessions,
// endpoints as they change) is kept in memory by the server and written
// through here.
type Node struct {
	ID ids.NodeID
	// MachineKey is the text form "mkey:<hex>". Not unique: a machine
	// has a node per user it logged in as.
	MachineKey string
	// NodeKey is the text form "nodekey:<hex>"; unique.
	NodeKey string
	// DiscoKey is "discokey:<hex>", or "" when unknown.
	DiscoKey  string
	Endpoints []string
	// Hostinfo is the client's tailcfg.Hostinfo as raw JSON; nil when
	// unknown.
	Hostinfo []byte
	// IPv4 and IPv6 are "" when not allocated; each is unique when set.
	IPv4, IPv6 string
	// Hostname is the name the client reported.
	Hostname string
	// GivenName is the MagicDNS name; unique.
	GivenName string
	// UserID owns the node; nil for tagged nodes.
	UserID *ids.UserID
	// RegisterMethod is "authkey", "cli" or "oidc".
	RegisterMethod string
	Tags           []string
	// AuthKeyID is the pre-auth key the node registered with; it becomes
	// nil when that key is deleted.
	AuthKeyID *ids.PreAuthKeyID
	Ephemeral bool
	// LastSeen is zero if the node has never connected.
	LastSeen time.Time
	// Expiry is zero if the node key never expires.
	Expiry         time.Time
	ApprovedRoutes []string
	// PendingApproval is set for a node registered while
	// node.require_approval was on, until an admin approves it (column
	// approved, its negation, so that existing and imported rows are
	// approved).
	PendingApproval bool
	CreatedAt       time.Time
	UpdatedAt       time.Time
	// Version is the row's version: 1 when registered, one more with
	// every edit and registration since (not with the periodic write of
	// endpoints, host info and last seen, UpdateNodes). The store sets
	// it; UpdateNodeIfVersion writes only if it is still the stored one.
	Version int64
}

// nodeArgs are the encoded column values shared by insert and update, in
// qInsertNode order from machine_key through approved.
func nodeArgs(n Node) ([]any, error) {
	endpoints, err := encodeList(n.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("endpoints: %w", err)
	}
	tags, err := encodeList(n.Tags)
	if err != nil {
		return nil, fmt.Errorf("tags: %w", err)
	}
	routes, err := encodeList(n.ApprovedRoutes)
	if err != nil {
		return nil, fmt.Errorf("approved routes: %w", err)
	}
	return []any{
		n.MachineKey, n.NodeKey, n.DiscoKey, endpoints, nullBytes(n.Hostinfo),
		nullString(n.IPv4), nullString(n.IPv6), n.Hostname, n.GivenName,
		nullID(n.UserID), n.RegisterMethod, tags, nullID(n.AuthKeyID), n.Ephemeral,
		nullMillis(n.LastSeen), nullMillis(n.Expiry), routes, !n.PendingApproval,
	}, nil
}

func scanNode(sc scanner) (Node, error) {
	var (
		n                       Node
		id, ctd, upd            int64
		endpoints, tags, routes string
		hostinfo, ipv4, ipv6    sql.NullString
		userID, authKeyID       sql.NullInt64
		lastSeen, expiry        sql.NullInt64
		approved                bool
	)
	if err := sc.Scan(&id, &n.MachineKey, &n.NodeKey, &n.DiscoKey, &endpoints, &hostinfo, &ipv4, &ipv6,
		&n.Hostname, &n.GivenName, &userID, &n.RegisterMethod, &tags, &authKeyID, &n.Ephemeral,
		&lastSeen, &expiry, &routes, &approved, &ctd, &upd, &n.Version); err != nil {
		return Node{}, mapErr(err)
	}
	var err error
	if n.Endpoints, err = decodeList(endpoints); err != nil {
		return Node{}, fmt.Errorf("node %d endpoints: %w", id, err)
	}
	if n.Tags, err = decodeList(tags); err != nil {
		return Node{}, fmt.Errorf("node %d tags: %w", id, err)
	}
	if n.ApprovedRoutes, err = decodeList(routes); err != nil {
		return Node{}, fmt.Errorf("node %d approved routes: %w", id, err)
	}
	if hostinfo.Valid {
		n.Hostinfo = []byte(hostinfo.String)
	}
	n.ID = ids.NodeID(id)
	n.IPv4 = ipv4.String
	n.IPv6 = ipv6.String
	n.PendingApproval = !approved
	n.UserID = idPtr[ids.UserID](userID)
	n.AuthKeyID = idPtr[ids.PreAuthKeyID](authKeyID)
	n.LastSeen = fromNullMillis(lastSeen)
	n.Expiry = fromNullMillis(expiry)
	n.CreatedAt = fromMillis(ctd)
	n.UpdatedAt = fromMillis(upd)
	return n, nil
}

// RegisterNode inserts a new node (n.ID is ignored and assigned; a zero
// CreatedAt means now; UpdatedAt is set to now) and returns the stored node.
// When singleUseKeyID != 0 it marks that pre-auth key used in the same
// transaction, failing with ErrKeyUsed if it already was, so two concurrent
// registrations with one single-use key cannot both succeed. Duplicate
// unique columns are ErrConflict; an unknown UserID or AuthKeyID is
// ErrNotFound.
func (s *Store) RegisterNode(ctx context.Context, n Node, singleUseKeyID ids.PreAuthKeyID) (Node, error) {
	return s.RegisterNodeWithKey(ctx, n, singleUseKeyID, Rehash{})
}

// Rehash replaces a pre-auth key's stored hash From by To, if it is still
// From: after a key imported from Headscale with a bcrypt hash was checked,
// its hash becomes the server's SHA-256 of the same secret, so bcrypt runs
// once per key. A zero Key does nothing.
type Rehash struct {
	Key      ids.PreAuthKeyID
	From, To []byte
}

// RegisterNodeWithKey is RegisterNode that also applies rehash to the key
// used, in the same transaction.
func (s *Store) RegisterNodeWithKey(ctx context.Context, n Node, singleUseKeyID ids.PreAuthKeyID, rehash Rehash) (Node, error) {
	defer s.observe("register_node", time.Now())
	args, err := nodeArgs(n)
	if err != nil {
		return Node{}, fmt.Errorf("register node %q: %w", n.GivenName, err)
	}
	now := nowMillis()
	args = append(args, millis(orNow(n.CreatedAt)), millis(now))

	var out Node
	if singleUseKeyID == 0 && rehash.Key == 0 {
		// One statement is its own transaction: no BEGIN and COMMIT
		// round trips (on PostgreSQL each is a wait on another process,
		// and registrations are written one at a time). It is as atomic
		// and, committed, as durable.
		// (With the change log on, it and its record are one
		// transaction.)
		err = s.logOne(ctx, func(q dbtx, c *changes) error {
			var err error
			if out, err = scanNode(q.QueryRowContext(ctx, qInsertNode, args...)); err != nil {
				return err
			}
			return c.node(out, true)
		})
		if err != nil {
			return Node{}, fmt.Errorf("register node %q: %w", n.GivenName, err)
		}
		return out, nil
	}
	err = s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		if singleUseKeyID != 0 {
			if err := useKey(ctx, tx, singleUseKeyID); err != nil {
				return err
			}
		}
		if rehash.Key != 0 {
			if err := rehashKey(ctx, tx, rehash); err != nil {
				return err
			}
		}
		var err error
		if out, err = scanNode(tx.QueryRowContext(ctx, qInsertNode, args...)); err != nil {
			return err
		}
		return c.node(out, true)
	})
	if err != nil {
		return Node{}, fmt.Errorf("register node %q: %w", n.GivenName, err)
	}
	return out, nil
}

// registerChunk is the most nodes RegisterNodes puts in one INSERT: 20
// parameters each stays far below either engine's limit on parameters.
const registerChunk = 256

// RegisterNodes inserts new nodes the way RegisterNode does with no
// single-use key, all or none: one statement for up to registerChunk
// nodes (no BEGIN and COMMIT round trips), one transaction beyond. It
// returns the stored nodes in the order given. The state writes the
// registrations that queued while one was written this way, so a burst
// of registrations costs one round trip and one commit per batch, not per
// node. Any error (a duplicate, an unknown user) fails the whole batch;
// the caller then writes its nodes one at a time to find out which.
func (s *Store) RegisterNodes(ctx context.Context, nodes []Node) ([]Node, error) {
	defer s.observe("register_nodes", time.Now())
	if len(nodes) == 0 {
		return nil, nil
	}
	now := millis(nowMillis())
	args := make([]any, 0, len(nodes)*nodeInsertCols)
	for _, n := range nodes {
		a, err := nodeArgs(n)
		if err != nil {
			return nil, fmt.Errorf("register node %q: %w", n.GivenName, err)
		}
		args = append(args, a...)
		args = append(args, millis(orNow(n.CreatedAt)), now)
	}
	// Node keys are unique (machine keys are not: a machine has a node
	// per user), so they match returned rows to the nodes given.
	byNodeKey := make(map[string]Node, len(nodes))
	insert := func(q queryer, args []any, rows int) error {
		res, err := q.QueryContext(ctx, insertNodesQuery(rows), args...)
		if err != nil {
			return mapErr(err)
		}
		defer res.Close()
		for res.Next() {
			n, err := scanNode(res)
			if err != nil {
				return err
			}
			byNodeKey[n.NodeKey] = n
		}
		return mapErr(res.Err())
	}
	var err error
	if len(nodes) <= registerChunk && !s.logging() {
		err = insert(s.write, args, len(nodes))
	} else {
		err = s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
			clear(byNodeKey)
			for rest := args; len(rest) > 0; {
				rows := min(len(rest)/nodeInsertCols, registerChunk)
				if err := insert(tx, rest[:rows*nodeInsertCols], rows); err != nil {
					return err
				}
				rest = rest[rows*nodeInsertCols:]
			}
			if !c.on {
				return nil
			}
			for _, n := range nodes {
				stored, ok := byNodeKey[n.NodeKey]
				if !ok {
					return fmt.Errorf("node key %s not returned by the insert", n.NodeKey)
				}
				if err := c.node(stored, true); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("register %d nodes: %w", len(nodes), err)
	}
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		stored, ok := byNodeKey[n.NodeKey]
		if !ok {
			return nil, fmt.Errorf("register %d nodes: node key %s not returned by the insert", len(nodes), n.NodeKey)
		}
		out[i] = stored
	}
	return out, nil
}

// queryer is what RegisterNodes needs of a pool or a transaction.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// nodeInsertCols is the number of values qInsertNode takes per node.
const nodeInsertCols = 20

// insertNodesQuery is qInsertNode with rows rows of values.
func insertNodesQuery(rows int) string {
	var b strings.Builder
	head, _, _ := strings.Cut(qInsertNode, "VALUES")
	b.WriteString(head)
	b.WriteString("VALUES ")
	for r := range rows {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := range nodeInsertCols {
			if c > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "$%d", r*nodeInsertCols+c+1)
		}
		b.WriteByte(')')
	}
	b.WriteString("\nRETURNING ")
	b.WriteString(nodeCols)
	return b.String()
}

// UpdateNodes writes nodes in transactions of up to 1,000 (the state's
// periodic flush of endpoints, host info and last-seen times: one
// transaction instead of one per node). Nodes deleted meanwhile are
// skipped.
func (s *Store) UpdateNodes(ctx context.Context, nodes []Node) error {
	defer s.observe("update_nodes", time.Now())
	// In ID order, so that two batches over the same nodes lock their
	// rows in the same order (PostgreSQL would otherwise abort one as a
	// deadlock).
	nodes = slices.SortedStableFunc(slices.Values(nodes), func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	for len(nodes) > 0 {
		chunk := nodes[:min(len(nodes), 1000)]
		nodes = nodes[len(chunk):]
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			now := millis(nowMillis())
			for _, n := range chunk {
				args, err := nodeArgs(n)
				if err != nil {
					return fmt.Errorf("node %d: %w", n.ID, err)
				}
				args = append(args, now, dbID(n.ID))
				if _, err := tx.ExecContext(ctx, qUpdateNode, args...); err != nil {
					return fmt.Errorf("node %d: %w", n.ID, mapErr(err))
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("update nodes: %w", err)
		}
	}
	return nil
}

// UpdateNode rewrites every column of the node with n.ID except CreatedAt
// and Version, sets UpdatedAt to now and makes it a new version.
// ErrNotFound if the node does not exist, ErrConflict on a duplicate
// unique column. singleUseKeyID behaves as in RegisterNode (an existing
// machine re-registering with a key). With the change log on it returns
// the node as stored (its new Version); otherwise the zero Node.
func (s *Store) UpdateNode(ctx context.Context, n Node, singleUseKeyID ids.PreAuthKeyID) (Node, error) {
	return s.editNode(ctx, n, singleUseKeyID, Rehash{}, false, false)
}

// UpdateNodeWithKey is UpdateNode for a machine registering again: it
// also applies rehash to the key used, in the same transaction, and its
// change-log record says the node registered.
func (s *Store) UpdateNodeWithKey(ctx context.Context, n Node, singleUseKeyID ids.PreAuthKeyID, rehash Rehash) (Node, error) {
	return s.editNode(ctx, n, singleUseKeyID, rehash, true, false)
}

// UpdateNodeIfVersion is UpdateNode as a compare-and-swap: it writes n
// only if the stored row is still at n.Version, and returns the node as
// stored, at its new version. ErrStale if another write changed the node
// since it was read at n.Version (nothing is written), ErrNotFound if it
// was deleted.
func (s *Store) UpdateNodeIfVersion(ctx context.Context, n Node) (Node, error) {
	return s.editNode(ctx, n, 0, Rehash{}, false, true)
}

// editNode is UpdateNode, UpdateNodeWithKey (registered) and
// UpdateNodeIfVersion (cas). It returns the stored node where it read it
// (cas, or the change log on).
func (s *Store) editNode(ctx context.Context, n Node, singleUseKeyID ids.PreAuthKeyID, rehash Rehash, registered, cas bool) (Node, error) {
	defer s.observe("update_node", time.Now())
	args, err := nodeArgs(n)
	if err != nil {
		return Node{}, fmt.Errorf("update node %d: %w", n.ID, err)
	}
	args = append(args, millis(nowMillis()), dbID(n.ID))
	casArgs := append(slices.Clip(args), n.Version)

	var out Node
	err = s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		if singleUseKeyID != 0 {
			if err := useKey(ctx, tx, singleUseKeyID); err != nil {
				return err
			}
		}
		if rehash.Key != 0 {
			if err := rehashKey(ctx, tx, rehash); err != nil {
				return err
			}
		}
		var err error
		switch {
		case cas:
			out, err = scanNode(tx.QueryRowContext(ctx, qEditNodeIfVersion, casArgs...))
			// A bare ErrNotFound is "no row"; a missing user or key is
			// a kindError wrapping it.
			if err == ErrNotFound {
				var rows int
				if err := tx.QueryRowContext(ctx, qNodeExists, dbID(n.ID)).Scan(&rows); err != nil {
					return mapErr(err)
				}
				if rows > 0 {
					return &kindError{msg: fmt.Sprintf("node was read at version %d: %s", n.Version, ErrStale), kind: ErrStale}
				}
			}
		case c.on:
			out, err = scanNode(tx.QueryRowContext(ctx, qEditNodeReturning, args...))
		default:
			res, err := tx.ExecContext(ctx, qEditNode, args...)
			if err != nil {
				return mapErr(err)
			}
			rows, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("rows affected: %w", err)
			}
			if rows == 0 {
				return ErrNotFound
			}
			return nil
		}
		if err != nil {
			return err
		}
		return c.node(out, registered)
	})
	if err != nil {
		return Node{}, fmt.Errorf("update node %d: %w", n.ID, err)
	}
	return out, nil
}

// GetNode returns the node with the given id, or ErrNotFound.
func (s *Store) GetNode(ctx context.Context, id ids.NodeID) (Node, error) {
	defer s.observe("get_node", time.Now())
	n, err := scanNode(s.read.QueryRowContext(ctx, qGetNode, dbID(id)))
	if err != nil {
		return Node{}, fmt.Errorf("get node %d: %w", id, err)
	}
	return n, nil
}

// ListNodes returns every node ordered by id; the server loads them at
// start-up.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	defer s.observe("list_nodes", time.Now())
	rows, err := s.read.QueryContext(ctx, qListNodes)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// DeleteNode removes a node; ErrNotFound if there is no such node.
func (s *Store) DeleteNode(ctx context.Context, id ids.NodeID) error {
	defer s.observe("delete_node", time.Now())
	err := s.logOne(ctx, func(q dbtx, c *changes) error {
		if err := execOne(ctx, q, qDeleteNode, dbID(id)); err != nil {
			return err
		}
		return c.nodeDeleted(id)
	})
	if err != nil {
		return fmt.Errorf("delete node %d: %w", id, err)
	}
	return nil
}

// SetLastSeen writes many nodes' last-seen times in one transaction, so the
// server can batch them off the hot path. Ids that no longer exist (nodes
// deleted since the batch was collected) are skipped.
func (s *Store) SetLastSeen(ctx context.Context, seen map[ids.NodeID]time.Time) error {
	defer s.observe("set_last_seen", time.Now())
	if len(seen) == 0 {
		return nil
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, qSetLastSeen)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		defer stmt.Close()
		// In ID order, so that concurrent batches lock rows in the same
		// order (see UpdateNodes).
		for _, id := range slices.Sorted(maps.Keys(seen)) {
			if _, err := stmt.ExecContext(ctx, nullMillis(seen[id]), dbID(id)); err != nil {
				return fmt.Errorf("node %d: %w", id, mapErr(err))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set last seen (%d nodes): %w", len(seen), err)
	}
	return nil
}
