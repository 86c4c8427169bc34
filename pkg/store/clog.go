package store

// The change log's write side (issue 17, several servers on one
// PostgreSQL). With Options.ChangeLog set, every write that changes what
// a server keeps in memory (nodes, users, the policy) appends records
// saying what changed to the table change_log, in the same transaction,
// so that other servers on the database can read and apply them in
// order. Off (the default, and always on SQLite), writes run exactly the
// statements they ran before the change log existed.
//
// Ordering: the transaction's last statement adds its records' count to
// the one row of change_log_head and numbers the records from it. The
// row lock is held until commit, so a transaction that numbers after
// another commits after it: the numbers are gap-free (a rollback gives
// them back) and in commit order, and a reader that sees number n knows
// every smaller one is committed. The same statement inserts the records
// and queues pg_notify(ChangeChannel(), last number), which PostgreSQL
// delivers at commit (never for a rollback).

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// ErrStale reports that a compare-and-swap write found the row at another
// version than the caller read: another writer changed it meanwhile.
// Nothing was written; the caller reads the row again and retries.
var ErrStale = errors.New("changed by another writer meanwhile")

// ChangeLogOptions switch the change log on (Options.ChangeLog).
type ChangeLogOptions struct {
	// Origin names the writer in its records (the server's incarnation);
	// a server skips the records of its own incarnation, which it
	// applied before the write returned.
	Origin string
}

// clone copies o, so that the caller's later changes do not reach the
// store; nil stays nil.
func (o *ChangeLogOptions) clone() *ChangeLogOptions {
	if o == nil {
		return nil
	}
	c := *o
	return &c
}

// Kinds of change-log records (Record.Kind).
const (
	// KindNode: a node was registered or changed; Record.Node decodes
	// the row as stored.
	KindNode = "node"
	// KindNodeDeleted: a node was deleted; Record.DeletedID is its ID.
	KindNodeDeleted = "node_deleted"
	// KindUser: a user was created or changed; Record.User decodes the
	// row as stored.
	KindUser = "user"
	// KindUserDeleted: a user was deleted; Record.DeletedID is its ID.
	KindUserDeleted = "user_deleted"
	// KindPolicy: a policy row was stored or deleted (the undo of a
	// policy that could not be put in force); Record.Policy says which.
	// Readers read the current policy from the store.
	KindPolicy = "policy"
)

// recordVersion is the "v" of every record's data.
const recordVersion = 1

// Record is one fact of the change log.
type Record struct {
	// Seq numbers the records of a database (schema) from 1, without
	// gaps, in commit order.
	Seq int64
	// Origin is ChangeLogOptions.Origin of the writer.
	Origin string
	// Kind is one of the Kind constants.
	Kind string
	// NodeID and UserID name the node and user the record is about (0 for
	// none), for debugging and pruning; Data is authoritative.
	NodeID ids.NodeID
	UserID ids.UserID
	// Data is the fact as versioned JSON ({"v":1,...}); decode it with the
	// methods below.
	Data []byte
	// At is when it was written, by the database's clock (millisecond
	// precision).
	At time.Time
}

// nodeData is the data of a KindNode record.
type nodeData struct {
	V    int  `json:"v"`
	Node Node `json:"node"`
	// Registered: the write registered the node (a new node, or an
	// existing one registering again).
	Registered bool `json:"registered,omitempty"`
}

// userData is the data of a KindUser record.
type userData struct {
	V    int  `json:"v"`
	User User `json:"user"`
}

// idData is the data of KindNodeDeleted, KindUserDeleted and KindPolicy
// records.
type idData struct {
	V  int    `json:"v"`
	ID uint64 `json:"id"`
	// Deleted (policy records): the row was deleted, not stored.
	Deleted bool `json:"deleted,omitempty"`
}

// decode unmarshals r.Data into v after checking r's kind and version.
func (r Record) decode(kind string, v any) error {
	if r.Kind != kind {
		return fmt.Errorf("change %d is a %q record, not %q", r.Seq, r.Kind, kind)
	}
	var head struct {
		V int `json:"v"`
	}
	if err := json.Unmarshal(r.Data, &head); err != nil {
		return fmt.Errorf("change %d: %w", r.Seq, err)
	}
	if head.V != recordVersion {
		return fmt.Errorf("change %d: data version %d, this headscale reads %d (servers of different releases on one database?)", r.Seq, head.V, recordVersion)
	}
	if err := json.Unmarshal(r.Data, v); err != nil {
		return fmt.Errorf("change %d: %w", r.Seq, err)
	}
	return nil
}

// Node decodes a KindNode record: the node as stored by the write, and
// whether the write registered it.
func (r Record) Node() (n Node, registered bool, err error) {
	var d nodeData
	if err := r.decode(KindNode, &d); err != nil {
		return Node{}, false, err
	}
	return d.Node, d.Registered, nil
}

// User decodes a KindUser record: the user as stored by the write.
func (r Record) User() (User, error) {
	var d userData
	if err := r.decode(KindUser, &d); err != nil {
		return User{}, err
	}
	return d.User, nil
}

// DeletedID decodes a KindNodeDeleted or KindUserDeleted record: the ID
// of the deleted node or user.
func (r Record) DeletedID() (uint64, error) {
	if r.Kind != KindNodeDeleted && r.Kind != KindUserDeleted {
		return 0, fmt.Errorf("change %d is a %q record, not a deletion", r.Seq, r.Kind)
	}
	var d idData
	if err := r.decode(r.Kind, &d); err != nil {
		return 0, err
	}
	return d.ID, nil
}

// Policy decodes a KindPolicy record: the policy row's ID and whether it
// was deleted (the current policy is then the newest row before it).
func (r Record) Policy() (id int64, deleted bool, err error) {
	var d idData
	if err := r.decode(KindPolicy, &d); err != nil {
		return 0, false, err
	}
	return int64(d.ID), d.Deleted, nil
}

// runtimeTables are tables of the schema that describe the servers
// running on a database rather than the tailnet: Copy (db migrate,
// backups and restores of PostgreSQL) leaves them out. A copy starts a
// new change log; servers starting on it load a snapshot.
var runtimeTables = []string{"change_log_head", "change_log", "cluster_servers", "node_sessions", "cluster_leases", "route_primaries", "auth_requests"}

// changes collects the records of one write transaction. With the change
// log off it records nothing, and its methods cost nothing.
type changes struct {
	on   bool
	recs []Record
}

// add appends a record whose data is v marshalled.
func (c *changes) add(kind string, node ids.NodeID, user ids.UserID, v any) error {
	if !c.on {
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s change: %w", kind, err)
	}
	c.recs = append(c.recs, Record{Kind: kind, NodeID: node, UserID: user, Data: data})
	return nil
}

// node records n as stored.
func (c *changes) node(n Node, registered bool) error {
	var uid ids.UserID
	if n.UserID != nil {
		uid = *n.UserID
	}
	return c.add(KindNode, n.ID, uid, nodeData{V: recordVersion, Node: n, Registered: registered})
}

// nodeDeleted records the deletion of node id.
func (c *changes) nodeDeleted(id ids.NodeID) error {
	return c.add(KindNodeDeleted, id, 0, idData{V: recordVersion, ID: uint64(id)})
}

// user records u as stored.
func (c *changes) user(u User) error {
	return c.add(KindUser, 0, u.ID, userData{V: recordVersion, User: u})
}

// userDeleted records the deletion of user id.
func (c *changes) userDeleted(id ids.UserID) error {
	return c.add(KindUserDeleted, 0, id, idData{V: recordVersion, ID: uint64(id)})
}

// policy records that policy row id was stored (or deleted).
func (c *changes) policy(id int64, deleted bool) error {
	return c.add(KindPolicy, 0, 0, idData{V: recordVersion, ID: uint64(id), Deleted: deleted})
}

// logging reports whether writes append to the change log.
func (s *Store) logging() bool { return s.clog != nil }

// qAppendChanges is the last statement of a logging transaction: it moves
// the head by the number of records ($2 has one element per record),
// inserts them numbered from the old head, and queues a notification
// carrying the new head. The statement is the same for any number of
// records, so pgx prepares it once per connection.
const qAppendChanges = `WITH h AS (
	UPDATE change_log_head SET seq = seq + cardinality(CAST($2 AS TEXT[])) WHERE id = 1 RETURNING seq
), ins AS (
	INSERT INTO change_log (seq, origin, kind, node_id, user_id, data, at)
	SELECT h.seq - cardinality(CAST($2 AS TEXT[])) + n, CAST($1 AS TEXT), kind, NULLIF(node_id, 0), NULLIF(user_id, 0), data,
		CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)
	FROM h, unnest(CAST($2 AS TEXT[]), CAST($3 AS BIGINT[]), CAST($4 AS BIGINT[]), CAST($5 AS TEXT[]))
		WITH ORDINALITY AS r (kind, node_id, user_id, data, n)
)
SELECT h.seq, CAST(pg_notify(CAST($6 AS TEXT), CAST(h.seq AS TEXT)) AS TEXT) FROM h`

// appendChanges writes recs as the last statement of tx (nothing for no
// records or with the change log off).
func (s *Store) appendChanges(ctx context.Context, tx *sql.Tx, recs []Record) error {
	if !s.logging() || len(recs) == 0 {
		return nil
	}
	kinds := make([]string, len(recs))
	nodes := make([]int64, len(recs))
	users := make([]int64, len(recs))
	data := make([]string, len(recs))
	for i, r := range recs {
		kinds[i], nodes[i], users[i], data[i] = r.Kind, int64(r.NodeID), int64(r.UserID), string(r.Data)
	}
	var last int64
	var notified sql.NullString
	if err := tx.QueryRowContext(ctx, qAppendChanges, s.clog.Origin, kinds, nodes, users, data, s.channel).Scan(&last, &notified); err != nil {
		return fmt.Errorf("append %d change-log records: %w", len(recs), mapErr(err))
	}
	return nil
}

// logTx is writeTx for a write that records changes: fn makes the write
// and adds its records to c, which are appended after fn returns, as the
// transaction's last statement (so the head row is the last lock it
// takes). A transaction run again (writeTx's retries) starts with no
// records: fn adds them again.
func (s *Store) logTx(ctx context.Context, fn func(tx *sql.Tx, c *changes) error) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		c := &changes{on: s.logging()}
		if err := fn(tx, c); err != nil {
			return err
		}
		return s.appendChanges(ctx, tx, c.recs)
	})
}

// dbtx is what a write needs of a pool or a transaction.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// logOne runs a write that is a single statement: with the change log off
// on the write pool, as its own transaction (no BEGIN and COMMIT round
// trips), and with it on in logTx, followed by its records.
func (s *Store) logOne(ctx context.Context, fn func(q dbtx, c *changes) error) error {
	if !s.logging() {
		return fn(s.write, &changes{})
	}
	return s.logTx(ctx, func(tx *sql.Tx, c *changes) error { return fn(tx, c) })
}

// changeChannel is the notification channel of the change log of schema
// ("" for the default, public): "hs_" and 16 hex digits of the schema
// name's SHA-256, short and free of characters an identifier would need
// quoted.
func changeChannel(schema string) string {
	if schema == "" {
		schema = "public"
	}
	sum := sha256.Sum256([]byte(schema))
	return "hs_" + hex.EncodeToString(sum[:8])
}

// ChangeChannel is the channel a logging write notifies at commit (LISTEN
// to it to wake up for new records), with the new head as payload. It is
// "" on SQLite.
func (s *Store) ChangeChannel() string { return s.channel }

const (
	qChangeLogHead = `SELECT seq FROM change_log_head WHERE id = 1`
	qReadChanges   = `SELECT seq, origin, kind, node_id, user_id, data, at FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2`
)

// ChangeLogHead returns the number of the newest committed record (0 for
// none).
func (s *Store) ChangeLogHead(ctx context.Context) (int64, error) {
	defer s.observe("change_log_head", time.Now())
	var seq int64
	if err := s.read.QueryRowContext(ctx, qChangeLogHead).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read the change log's head: %w", mapErr(err))
	}
	return seq, nil
}

// ReadChanges returns up to limit committed records numbered above after,
// in order. Numbers have no gaps: a reader that applied up to n and reads
// from n gets n+1 first, unless it was pruned.
func (s *Store) ReadChanges(ctx context.Context, after int64, limit int) ([]Record, error) {
	defer s.observe("read_changes", time.Now())
	if limit <= 0 {
		return nil, fmt.Errorf("read changes after %d: limit %d, want at least 1", after, limit)
	}
	rows, err := s.read.QueryContext(ctx, qReadChanges, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read changes after %d: %w", after, mapErr(err))
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var (
			r          Record
			node, user sql.NullInt64
			data       string
			at         int64
		)
		if err := rows.Scan(&r.Seq, &r.Origin, &r.Kind, &node, &user, &data, &at); err != nil {
			return nil, fmt.Errorf("read changes after %d: %w", after, mapErr(err))
		}
		r.NodeID, r.UserID = ids.NodeID(node.Int64), ids.UserID(user.Int64)
		r.Data, r.At = []byte(data), fromMillis(at)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read changes after %d: %w", after, mapErr(err))
	}
	return out, nil
}

// unlinkKeyNodes runs query, which clears the key of the nodes registered
// with pre-auth keys about to be deleted (the foreign key's ON DELETE SET
// NULL, done first so that the nodes are known) and returns them, and
// records each node.
func unlinkKeyNodes(ctx context.Context, q dbtx, c *changes, query string, args ...any) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("unlink nodes from the key: %w", mapErr(err))
	}
	defer rows.Close()
	var nodes []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return fmt.Errorf("unlink nodes from the key: %w", err)
		}
		nodes = append(nodes, n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("unlink nodes from the key: %w", mapErr(err))
	}
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	for _, n := range nodes {
		if err := c.node(n, false); err != nil {
			return err
		}
	}
	return nil
}
