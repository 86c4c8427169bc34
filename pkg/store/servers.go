package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// Servers of one tailnet on one PostgreSQL database (issue 17): each
// running server holds a row in cluster_servers whose expiry it renews,
// and jobs that must run once per tailnet run under a lease in
// cluster_leases. Every time is the database's clock (dbNowMS), so the
// servers' clocks need not agree. SQLite has one server: these methods
// return ErrClusterNeedsPostgres there.

// ErrClusterNeedsPostgres reports a cluster method called on SQLite.
var ErrClusterNeedsPostgres = errors.New("several servers need a PostgreSQL database")

// dbNowMS is the database's clock in unix milliseconds, read when the
// statement runs (clock_timestamp, not the transaction's start).
const dbNowMS = `(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT`

// ClusterServer is a server process serving the tailnet.
type ClusterServer struct {
	// ID names this process start (its incarnation): a server that
	// restarts gets a new one.
	ID string
	// Name is the configured server name, the same across restarts.
	Name string
	// StartedAt is when the row was written; ExpiresAt is when the server
	// counts as gone unless it renews first.
	StartedAt, ExpiresAt time.Time
	// Live says ExpiresAt is still ahead by the database's clock.
	Live bool
	// AppliedSeq is the last change-log record the server applied, as of
	// its last renewal.
	AppliedSeq int64
	// Version is the server's release; NoisePub its Noise public key
	// (every server of a tailnet must have the same).
	Version, NoisePub string
	// PolicyHash and ConfigHash describe the policy file and the settings
	// every server must agree on ("" when not reported).
	PolicyHash, ConfigHash string
}

func (s *Store) clusterOK() error {
	if s.d != postgresDialect {
		return ErrClusterNeedsPostgres
	}
	return nil
}

// JoinCluster writes srv's row, expiring ttl from now by the database's
// clock. An ID already present is an ErrConflict.
func (s *Store) JoinCluster(ctx context.Context, srv ClusterServer, ttl time.Duration) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("join_cluster", time.Now())
	_, err := s.write.ExecContext(ctx, `INSERT INTO cluster_servers
		(id, name, started_at, expires_at, applied_seq, version, noise_pub, policy_hash, config_hash)
		VALUES ($1, $2, `+dbNowMS+`, `+dbNowMS+` + $3, $4, $5, $6, $7, $8)`,
		srv.ID, srv.Name, ttl.Milliseconds(), srv.AppliedSeq, srv.Version, srv.NoisePub, srv.PolicyHash, srv.ConfigHash)
	if err != nil {
		return fmt.Errorf("joining the cluster as %s: %w", srv.ID, mapErr(err))
	}
	return nil
}

// RenewServer extends server id's expiry to ttl from now and records how
// far it applied the change log and its policy hash. ErrNotFound means
// the row is gone: another server declared this one dead (it was fenced),
// and it must not go on as if it were still a member.
func (s *Store) RenewServer(ctx context.Context, id string, ttl time.Duration, appliedSeq int64, policyHash string) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("renew_server", time.Now())
	err := s.execOne(ctx, `UPDATE cluster_servers SET expires_at = `+dbNowMS+` + $2, applied_seq = $3, policy_hash = $4 WHERE id = $1`,
		id, ttl.Milliseconds(), appliedSeq, policyHash)
	if err != nil {
		return fmt.Errorf("renewing server %s: %w", id, err)
	}
	return nil
}

// ClusterServers lists every server row, live or expired, by start time.
func (s *Store) ClusterServers(ctx context.Context) ([]ClusterServer, error) {
	if err := s.clusterOK(); err != nil {
		return nil, err
	}
	defer s.observe("cluster_servers", time.Now())
	rows, err := s.read.QueryContext(ctx, `SELECT id, name, started_at, expires_at, expires_at > `+dbNowMS+`,
		applied_seq, version, noise_pub, policy_hash, config_hash FROM cluster_servers ORDER BY started_at, id`)
	if err != nil {
		return nil, fmt.Errorf("listing servers: %w", mapErr(err))
	}
	defer rows.Close()
	var out []ClusterServer
	for rows.Next() {
		var c ClusterServer
		var started, expires int64
		if err := rows.Scan(&c.ID, &c.Name, &started, &expires, &c.Live, &c.AppliedSeq, &c.Version, &c.NoisePub, &c.PolicyHash, &c.ConfigHash); err != nil {
			return nil, fmt.Errorf("listing servers: %w", mapErr(err))
		}
		c.StartedAt, c.ExpiresAt = time.UnixMilli(started).UTC(), time.UnixMilli(expires).UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing servers: %w", mapErr(err))
	}
	return out, nil
}

// Lease is a holder's claim on a once-per-tailnet job.
type Lease struct {
	// Name is the job ("jobs").
	Name string
	// Holder is the server ID holding it.
	Holder string
	// Epoch grows by one whenever the holder changes: writes made under
	// the lease name it, so a holder that lost the lease without noticing
	// (it stalled past the expiry) cannot write (see HoldsLease).
	Epoch int64
}

// AcquireLease takes or renews lease name for holder until ttl from now:
// it succeeds when the lease is free, expired, or already holder's. ok
// false means another server holds it.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (l Lease, ok bool, err error) {
	if err := s.clusterOK(); err != nil {
		return Lease{}, false, err
	}
	defer s.observe("acquire_lease", time.Now())
	err = s.write.QueryRowContext(ctx, `INSERT INTO cluster_leases (name, holder, epoch, expires_at)
		VALUES ($1, $2, 1, `+dbNowMS+` + $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
			epoch = CASE WHEN cluster_leases.holder = excluded.holder THEN cluster_leases.epoch ELSE cluster_leases.epoch + 1 END
		WHERE cluster_leases.holder = excluded.holder OR cluster_leases.expires_at < `+dbNowMS+`
		RETURNING epoch`, name, holder, ttl.Milliseconds()).Scan(&l.Epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("acquiring lease %s: %w", name, mapErr(err))
	}
	l.Name, l.Holder = name, holder
	return l, true, nil
}

// ReleaseLease gives up l at once (a clean stop), so another server takes
// over without waiting for the expiry. A lease no longer held is left
// alone.
func (s *Store) ReleaseLease(ctx context.Context, l Lease) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("release_lease", time.Now())
	if _, err := s.write.ExecContext(ctx, `UPDATE cluster_leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND epoch = $3`,
		l.Name, l.Holder, l.Epoch); err != nil {
		return fmt.Errorf("releasing lease %s: %w", l.Name, mapErr(err))
	}
	return nil
}

// leaseHeld is the condition a write made under lease $1/$2/$3 (name,
// holder, epoch) adds, so that it happens only while the lease is still
// that holder's and unexpired.
const leaseHeld = `EXISTS (SELECT 1 FROM cluster_leases WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > ` + dbNowMS + `)`

// HoldsLease reports whether l is still held and unexpired by the
// database's clock.
func (s *Store) HoldsLease(ctx context.Context, l Lease) (bool, error) {
	if err := s.clusterOK(); err != nil {
		return false, err
	}
	var held bool
	if err := s.read.QueryRowContext(ctx, `SELECT `+leaseHeld, l.Name, l.Holder, l.Epoch).Scan(&held); err != nil {
		return false, fmt.Errorf("checking lease %s: %w", l.Name, mapErr(err))
	}
	return held, nil
}

// registrationLock is the second key of the advisory lock that keeps
// registrations of one tailnet (schema) to one server at a time; the
// first is the schema's hash, so tailnets do not wait for each other.
const registrationLock = 17

// LockRegistrations waits until no other server of the tailnet registers
// nodes, and keeps them out until release: a session advisory lock on a
// connection of its own, so the writes made meanwhile on other
// connections are committed before the next holder looks. If this
// process dies, PostgreSQL releases the lock with its connection.
func (s *Store) LockRegistrations(ctx context.Context) (release func(), err error) {
	if err := s.clusterOK(); err != nil {
		return nil, err
	}
	defer s.observe("lock_registrations", time.Now())
	conn, err := s.write.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("registration lock: %w", mapErr(err))
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(hashtext(current_schema()), $1)`, registrationLock); err != nil {
		conn.Close()
		return nil, fmt.Errorf("registration lock: %w", mapErr(err))
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_unlock(hashtext(current_schema()), $1)`, registrationLock); err != nil {
			// Closing the connection below cannot free the session's
			// lock when the pool keeps it: drop it instead.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			s.log.Warn("releasing the registration lock failed; its connection is dropped", "err", err)
		}
		conn.Close()
	}, nil
}

// PruneChanges deletes, under lease l, the change-log records older than
// keep that every live server has applied (by the applied_seq of its last
// renewal), and returns how many. A server that comes back after its
// records were pruned finds the gap and restarts from a snapshot.
func (s *Store) PruneChanges(ctx context.Context, l Lease, keep time.Duration) (int64, error) {
	if err := s.clusterOK(); err != nil {
		return 0, err
	}
	defer s.observe("prune_changes", time.Now())
	res, err := s.write.ExecContext(ctx, `DELETE FROM change_log WHERE at < `+dbNowMS+` - $4
AND seq <= (SELECT COALESCE(MIN(applied_seq), 0) FROM cluster_servers WHERE expires_at > `+dbNowMS+`)
AND `+leaseHeld, l.Name, l.Holder, l.Epoch, keep.Milliseconds())
	if err != nil {
		return 0, fmt.Errorf("pruning the change log: %w", mapErr(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("pruning the change log: %w", err)
	}
	return n, nil
}
