package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Pending interactive authentications shared by the servers of a tailnet
// (auth_requests, migration 0008): a web registration, an OIDC login or an
// SSH check begun on one server may be looked at, approved or rejected on
// another. A server opens a row (PutAuthRequest), any server claims it to
// decide (ClaimAuthRequest), and writes the decision with a
// KindAuthDecided record (DecideAuthRequest), from which the server whose
// client waits learns it. Only servers with the change log on use them.

// KindAuthDecided: a pending authentication was decided; Record.AuthDecided
// decodes it.
const KindAuthDecided = "auth_decided"

// AuthPending is the status of an undecided auth request.
const AuthPending = "pending"

// Errors of ClaimAuthRequest.
var (
	// ErrAuthDecided: the request was already decided.
	ErrAuthDecided = errors.New("auth request already decided")
	// ErrAuthBusy: another server is deciding the request.
	ErrAuthBusy = errors.New("auth request is being decided by another server")
)

// authRetention is how long a row stays after it expired, so that a
// late look still learns the outcome; older rows are deleted by the next
// PutAuthRequest.
const authRetention = time.Hour

// AuthRequest is a row of auth_requests.
type AuthRequest struct {
	ID string
	// Kind says which package wrote it (what Data holds).
	Kind string
	// Data is what was asked, as JSON.
	Data []byte
	// Status is AuthPending or the decision's status; Outcome the
	// decision (JSON, or empty).
	Status  string
	Outcome []byte
	// CreatedAt and ExpiresAt are by the opening server's clock.
	CreatedAt, ExpiresAt time.Time
}

// AuthDecision is the data of a KindAuthDecided record.
type AuthDecision struct {
	ID      string          `json:"id"`
	Kind    string          `json:"kind"`
	Status  string          `json:"status"`
	Outcome json.RawMessage `json:"outcome,omitempty"`
}

// authDecidedData is the data of a KindAuthDecided record.
type authDecidedData struct {
	V int `json:"v"`
	AuthDecision
}

// AuthDecided decodes a KindAuthDecided record.
func (r Record) AuthDecided() (AuthDecision, error) {
	var d authDecidedData
	if err := r.decode(KindAuthDecided, &d); err != nil {
		return AuthDecision{}, err
	}
	return d.AuthDecision, nil
}

const authColumns = `id, kind, data, status, outcome, created_at, expires_at`

func scanAuthRequest(row scanner) (AuthRequest, error) {
	var (
		r             AuthRequest
		data, outcome string
		created, exp  int64
	)
	if err := row.Scan(&r.ID, &r.Kind, &data, &r.Status, &outcome, &created, &exp); err != nil {
		return AuthRequest{}, err
	}
	r.Data, r.CreatedAt, r.ExpiresAt = []byte(data), fromMillis(created), fromMillis(exp)
	if outcome != "" {
		r.Outcome = []byte(outcome)
	}
	return r, nil
}

// PutAuthRequest opens auth request r (pending), and deletes rows that
// expired more than an hour ago. An ID already present is an ErrConflict.
func (s *Store) PutAuthRequest(ctx context.Context, r AuthRequest) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("put_auth_request", time.Now())
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM auth_requests WHERE expires_at < $1`, millis(r.CreatedAt.Add(-authRetention))); err != nil {
			return fmt.Errorf("dropping old auth requests: %w", mapErr(err))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO auth_requests (id, kind, data, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)`,
			r.ID, r.Kind, string(r.Data), millis(r.CreatedAt), millis(r.ExpiresAt)); err != nil {
			return fmt.Errorf("opening auth request: %w", mapErr(err))
		}
		return nil
	})
}

// GetAuthRequest returns auth request id (ErrNotFound when there is none).
func (s *Store) GetAuthRequest(ctx context.Context, id string) (AuthRequest, error) {
	if err := s.clusterOK(); err != nil {
		return AuthRequest{}, err
	}
	defer s.observe("get_auth_request", time.Now())
	r, err := scanAuthRequest(s.read.QueryRowContext(ctx, `SELECT `+authColumns+` FROM auth_requests WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return AuthRequest{}, ErrNotFound
	}
	if err != nil {
		return AuthRequest{}, fmt.Errorf("reading auth request: %w", mapErr(err))
	}
	return r, nil
}

// ClaimAuthRequest claims pending auth request id for this server for
// hold (by the database's clock), so that no other server decides it
// meanwhile, and returns it. The claim ends with DecideAuthRequest or
// ReleaseAuthRequest, or when hold passes. Errors: ErrNotFound (none, or
// expired by now, as the caller's clock says), ErrAuthDecided (with the
// row), ErrAuthBusy.
func (s *Store) ClaimAuthRequest(ctx context.Context, id string, now time.Time, hold time.Duration) (AuthRequest, error) {
	if err := s.clusterOK(); err != nil {
		return AuthRequest{}, err
	}
	defer s.observe("claim_auth_request", time.Now())
	r, err := scanAuthRequest(s.write.QueryRowContext(ctx, `UPDATE auth_requests SET claimed_until = `+dbNowMS+` + $2
WHERE id = $1 AND status = 'pending' AND claimed_until < `+dbNowMS+` AND expires_at > $3 RETURNING `+authColumns,
		id, hold.Milliseconds(), millis(now)))
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return AuthRequest{}, fmt.Errorf("claiming auth request: %w", mapErr(err))
	}
	r, err = s.GetAuthRequest(ctx, id)
	switch {
	case err != nil:
		return AuthRequest{}, err
	case r.Status != AuthPending:
		return r, ErrAuthDecided
	case !now.Before(r.ExpiresAt):
		return AuthRequest{}, ErrNotFound
	}
	return AuthRequest{}, ErrAuthBusy
}

// ReleaseAuthRequest ends this server's claim of id without deciding it.
func (s *Store) ReleaseAuthRequest(ctx context.Context, id string) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	defer s.observe("release_auth_request", time.Now())
	if _, err := s.write.ExecContext(ctx, `UPDATE auth_requests SET claimed_until = 0 WHERE id = $1 AND status = 'pending'`, id); err != nil {
		return fmt.Errorf("releasing auth request: %w", mapErr(err))
	}
	return nil
}

// DecideAuthRequest stores the decision of pending auth request id (its
// status and outcome) with a KindAuthDecided record, from which the other
// servers learn it. ErrNotFound when id is unknown or already decided.
//
// keep, when later than the request's expiry, becomes its expiry: the row
// and its outcome then stay until an hour after keep, for servers that
// start meanwhile (DecidedAuthRequests). Zero keeps the expiry.
func (s *Store) DecideAuthRequest(ctx context.Context, id, status string, outcome []byte, keep time.Time) error {
	if err := s.clusterOK(); err != nil {
		return err
	}
	if !s.logging() {
		return fmt.Errorf("decide auth request: the change log is off")
	}
	if status == AuthPending || status == "" {
		return fmt.Errorf("decide auth request: status %q is no decision", status)
	}
	defer s.observe("decide_auth_request", time.Now())
	return s.logTx(ctx, func(tx *sql.Tx, c *changes) error {
		var kind string
		var keepMS int64
		if !keep.IsZero() {
			keepMS = millis(keep)
		}
		err := tx.QueryRowContext(ctx, `UPDATE auth_requests SET status = $2, outcome = $3, claimed_until = 0,
expires_at = CASE WHEN expires_at < $4 THEN $4 ELSE expires_at END
WHERE id = $1 AND status = 'pending' RETURNING kind`, id, status, string(outcome), keepMS).Scan(&kind)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("deciding auth request: %w", mapErr(err))
		}
		return c.add(KindAuthDecided, 0, 0, authDecidedData{V: recordVersion,
			AuthDecision: AuthDecision{ID: id, Kind: kind, Status: status, Outcome: outcome}})
	})
}

// DecidedAuthRequests returns the auth requests of kind decided with
// status that are still kept (see DecideAuthRequest's keep), in the order
// they were opened: what a server starting now learns of decisions made
// before it (an SSH check's approval, remembered for its check period).
func (s *Store) DecidedAuthRequests(ctx context.Context, kind, status string) ([]AuthRequest, error) {
	if err := s.clusterOK(); err != nil {
		return nil, err
	}
	defer s.observe("decided_auth_requests", time.Now())
	out, err := queryAll(ctx, s.read, `SELECT `+authColumns+` FROM auth_requests WHERE kind = $1 AND status = $2 ORDER BY created_at, id`,
		scanAuthRequest, kind, status)
	if err != nil {
		return nil, fmt.Errorf("listing decided auth requests: %w", err)
	}
	return out, nil
}

// TakeAuthRequest deletes auth request id and returns it (ErrNotFound
// when there is none): for a request good once, taken by whichever server
// gets its next step (an OIDC login's callback).
func (s *Store) TakeAuthRequest(ctx context.Context, id string) (AuthRequest, error) {
	if err := s.clusterOK(); err != nil {
		return AuthRequest{}, err
	}
	defer s.observe("take_auth_request", time.Now())
	r, err := scanAuthRequest(s.write.QueryRowContext(ctx, `DELETE FROM auth_requests WHERE id = $1 RETURNING `+authColumns, id))
	if errors.Is(err, sql.ErrNoRows) {
		return AuthRequest{}, ErrNotFound
	}
	if err != nil {
		return AuthRequest{}, fmt.Errorf("taking auth request: %w", mapErr(err))
	}
	return r, nil
}
