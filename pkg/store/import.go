package store

// Writing a whole database at once, with the IDs it comes with: the
// target of taking over a Headscale database (pkg/hsimport). The rows are
// written into a new file, in one transaction, and checked before the
// caller puts the file in place.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// ImportData is every row of a database to write with Import. IDs are
// kept as given (they must be non-zero and unique per kind); references
// between rows must hold.
type ImportData struct {
	Users       []User
	PreAuthKeys []PreAuthKey
	Nodes       []Node
	APIKeys     []APIKey
	// Policies are written in order; the last one is the current policy.
	Policies []PolicyRecord
	RouteIDs []RouteID
	// Sequences raises each table's ID sequence (users, nodes,
	// pre_auth_keys, api_keys, policies, route_ids) to at least the given
	// value, so IDs the source had used and deleted are never handed out
	// again.
	Sequences map[string]int64
}

// PolicyRecord is one stored policy version.
type PolicyRecord struct {
	ID        int64
	Data      string
	UpdatedAt time.Time
}

// ImportCounts is how many rows of each table a written database holds.
type ImportCounts map[string]int

// importTables are the tables Import writes, in the order references
// allow: tenantTables.
var importTables = tenantTables

const (
	qImportUser = `INSERT INTO users (id, name, display_name, email, profile_pic_url, provider, provider_id, provider_groups, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`
	qImportPreAuthKey = `INSERT INTO pre_auth_keys (id, prefix, hash, user_id, reusable, ephemeral, used, tags, expiration, created_at, legacy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`
	qImportNode = `INSERT INTO nodes (machine_key, node_key, disco_key, endpoints, hostinfo, ipv4, ipv6, hostname, given_name,
user_id, register_method, tags, auth_key_id, ephemeral, last_seen, expiry, approved_routes, approved, created_at, updated_at, id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)`
	qImportAPIKey  = `INSERT INTO api_keys (id, prefix, hash, expiration, last_seen, created_at) VALUES ($1, $2, $3, $4, $5, $6)`
	qImportPolicy  = `INSERT INTO policies (id, data, updated_at) VALUES ($1, $2, $3)`
	qImportRouteID = `INSERT INTO route_ids (id, node_id, prefix, created_at) VALUES ($1, $2, $3, $4)`
)

// Import writes data into a new SQLite database at path (which must not
// exist): the schema, then every row in one transaction, then the ID
// sequences. It then checks the file (integrity_check, and each table's
// row count against data) and syncs it. On any error the file is removed.
func Import(ctx context.Context, path string, data ImportData) (ImportCounts, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("import: %s already exists", path)
	}
	ok := false
	defer func() {
		if !ok {
			for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
				os.Remove(path + suffix)
			}
		}
	}()
	s, err := Open(ctx, Options{Path: path, CheckpointInterval: -1})
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	err = s.writeTx(ctx, func(tx *sql.Tx) error { return importRows(ctx, tx, data, s.d.raiseSequence) })
	if cerr := s.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	counts, err := checkImported(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("import: the written database failed verification: %w", err)
	}
	want := ImportCounts{"users": len(data.Users), "pre_auth_keys": len(data.PreAuthKeys), "nodes": len(data.Nodes),
		"api_keys": len(data.APIKeys), "policies": len(data.Policies), "route_ids": len(data.RouteIDs)}
	for _, t := range importTables {
		if counts[t] != want[t] {
			return nil, fmt.Errorf("import: the written database holds %d rows in %s, want %d", counts[t], t, want[t])
		}
	}
	if _, err := syncFile(path); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	ok = true
	return counts, nil
}

// importRows writes d's rows in tx, then raises each table's ID sequence
// with raise (the dialect's).
func importRows(ctx context.Context, tx *sql.Tx, d ImportData, raise func(ctx context.Context, tx *sql.Tx, table string, want int64) error) error {
	// One prepared statement per table: preparing each insert again
	// would cost as much as running it.
	stmts := map[string]*sql.Stmt{}
	defer func() {
		for _, st := range stmts {
			st.Close()
		}
	}()
	exec := func(what string, id any, q string, args ...any) error {
		st := stmts[q]
		if st == nil {
			var err error
			if st, err = tx.PrepareContext(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", what, mapErr(err))
			}
			stmts[q] = st
		}
		if _, err := st.ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("%s %v: %w", what, id, mapErr(err))
		}
		return nil
	}
	for _, u := range d.Users {
		groups, err := encodeList(u.Groups)
		if err != nil {
			return fmt.Errorf("user %d: %w", u.ID, err)
		}
		if err := exec("user", u.ID, qImportUser, dbID(u.ID), u.Name, u.DisplayName, u.Email, u.ProfilePicURL,
			u.Provider, u.ProviderID, groups, millis(orNow(u.CreatedAt))); err != nil {
			return err
		}
	}
	for _, k := range d.PreAuthKeys {
		tags, err := encodeList(k.Tags)
		if err != nil {
			return fmt.Errorf("pre-auth key %d: %w", k.ID, err)
		}
		if err := exec("pre-auth key", k.ID, qImportPreAuthKey, dbID(k.ID), k.Prefix, encodeHash(k.Hash), nullID(k.UserID),
			k.Reusable, k.Ephemeral, k.Used, tags, nullMillis(k.Expiration), millis(orNow(k.CreatedAt)), k.Legacy); err != nil {
			return err
		}
	}
	for _, n := range d.Nodes {
		args, err := nodeArgs(n)
		if err != nil {
			return fmt.Errorf("node %d: %w", n.ID, err)
		}
		args = append(args, millis(orNow(n.CreatedAt)), millis(orNow(n.UpdatedAt)), dbID(n.ID))
		if err := exec("node", n.ID, qImportNode, args...); err != nil {
			return err
		}
	}
	for _, k := range d.APIKeys {
		if err := exec("api key", k.ID, qImportAPIKey, dbID(k.ID), k.Prefix, encodeHash(k.Hash), nullMillis(k.Expiration),
			nullMillis(k.LastSeen), millis(orNow(k.CreatedAt))); err != nil {
			return err
		}
	}
	for _, p := range d.Policies {
		if err := exec("policy", p.ID, qImportPolicy, p.ID, p.Data, millis(orNow(p.UpdatedAt))); err != nil {
			return err
		}
	}
	for _, r := range d.RouteIDs {
		if err := exec("route", r.ID, qImportRouteID, dbID(r.ID), dbID(r.NodeID), r.Prefix.String(), millis(orNow(r.CreatedAt))); err != nil {
			return err
		}
	}
	for _, t := range importTables {
		if err := raise(ctx, tx, t, d.Sequences[t]); err != nil {
			return fmt.Errorf("sequence of %s: %w", t, err)
		}
	}
	return nil
}

// checkImported runs integrity_check and a foreign-key check on a database
// file nothing else has open and counts the rows of every imported table.
func checkImported(ctx context.Context, path string) (ImportCounts, error) {
	if _, err := verifySnapshot(ctx, path); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(path, nil, url.Values{"mode": {"ro"}}))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, `PRAGMA foreign_key_check`)
	if err != nil {
		return nil, fmt.Errorf("foreign_key_check: %w", err)
	}
	bad := rows.Next()
	rows.Close()
	if bad {
		return nil, errors.New("foreign_key_check: a row references a row that does not exist")
	}
	return countRows(ctx, db)
}

func countRows(ctx context.Context, db *sql.DB) (ImportCounts, error) {
	counts := ImportCounts{}
	for _, t := range importTables {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&n); err != nil {
			return nil, fmt.Errorf("count %s: %w", t, err)
		}
		counts[t] = n
	}
	return counts, nil
}

// CheckEmpty returns nil when the database at path is missing, an empty
// file, or a database of this server holding no user, node, key, policy or
// route; otherwise an error saying what it holds. It only reads.
func CheckEmpty(ctx context.Context, path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := existingDatabase(path); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", dsn(path, nil, url.Values{"mode": {"ro"}}))
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if n == 0 {
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'`).Scan(&n); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if n == 0 {
			return nil
		}
		return fmt.Errorf("%s is not a database of this server", path)
	}
	counts, err := countRows(ctx, db)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, t := range importTables {
		if counts[t] > 0 {
			return fmt.Errorf("%s is not empty (%s holds %d rows)", path, t, counts[t])
		}
	}
	return nil
}
