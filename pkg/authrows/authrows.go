// Package authrows reads and writes the store's auth_requests rows of one
// kind with typed data: what pendingreg (web registrations), sshcheck (SSH
// checks) and oidclogin (logins in progress) share with the other servers
// of a tailnet (cluster.enabled). It holds the JSON encoding, the kind
// check and the release of a claim whose decision could not be stored, so
// that each of those packages keeps only what its requests mean.
package authrows

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/store"
)

// Timeout bounds each database call of the shared mode (Context).
const Timeout = 10 * time.Second

// Context is the context of one database call: Timeout, and not the
// caller's request's, so that a step a client gave up on still ends in a
// consistent row.
func Context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), Timeout)
}

// Kind is the rows of one kind in a store, whose data is a D.
type Kind[D any] struct {
	// Store holds the rows (with the change log on).
	Store *store.Store
	// Name is the rows' kind in the store.
	Name string
	// What names one request in errors ("registration", "SSH check").
	What string
}

// Row is a row of the kind with its data decoded.
type Row[D any] struct {
	store.AuthRequest
	// Value is the row's data, decoded.
	Value D
}

// Put opens request id holding v.
func (k Kind[D]) Put(ctx context.Context, id string, v D, created, expires time.Time) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", k.What, err)
	}
	if err := k.Store.PutAuthRequest(ctx, store.AuthRequest{ID: id, Kind: k.Name, Data: data, CreatedAt: created, ExpiresAt: expires}); err != nil {
		return fmt.Errorf("sharing %s: %w", k.What, err)
	}
	return nil
}

// decode decodes row; a row of another kind is store.ErrNotFound.
func (k Kind[D]) decode(row store.AuthRequest) (Row[D], error) {
	if row.Kind != k.Name {
		return Row[D]{}, store.ErrNotFound
	}
	r := Row[D]{AuthRequest: row}
	if err := json.Unmarshal(row.Data, &r.Value); err != nil {
		return Row[D]{}, fmt.Errorf("%s: decoding: %w", k.What, err)
	}
	return r, nil
}

// Get reads request id. store.ErrNotFound when there is none of the kind.
func (k Kind[D]) Get(ctx context.Context, id string) (Row[D], error) {
	row, err := k.Store.GetAuthRequest(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return Row[D]{}, err
		}
		return Row[D]{}, fmt.Errorf("reading shared %s: %w", k.What, err)
	}
	return k.decode(row)
}

// Take deletes request id and returns it, for a request good once.
// store.ErrNotFound when there is none of the kind, or it expired by now.
func (k Kind[D]) Take(ctx context.Context, id string, now time.Time) (Row[D], error) {
	row, err := k.Store.TakeAuthRequest(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return Row[D]{}, err
		}
		return Row[D]{}, fmt.Errorf("taking %s: %w", k.What, err)
	}
	if !now.Before(row.ExpiresAt) {
		return Row[D]{}, store.ErrNotFound
	}
	return k.decode(row)
}

// Claim claims pending request id for hold (store.ClaimAuthRequest). Its
// errors are the store's: store.ErrNotFound (none of the kind, or expired
// by now), store.ErrAuthDecided (with the row, decoded when it can be),
// store.ErrAuthBusy.
func (k Kind[D]) Claim(ctx context.Context, id string, now time.Time, hold time.Duration) (Row[D], error) {
	row, err := k.Store.ClaimAuthRequest(ctx, id, now, hold)
	switch {
	case errors.Is(err, store.ErrAuthDecided):
		r, derr := k.decode(row)
		if derr != nil {
			return Row[D]{}, derr
		}
		return r, err
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrAuthBusy):
		return Row[D]{}, err
	case err != nil:
		return Row[D]{}, fmt.Errorf("claiming shared %s: %w", k.What, err)
	}
	r, err := k.decode(row)
	if err != nil {
		_ = k.Store.ReleaseAuthRequest(ctx, id)
		return Row[D]{}, err
	}
	return r, nil
}

// Release ends this server's claim of id without deciding it.
func (k Kind[D]) Release(ctx context.Context, id string) error {
	if err := k.Store.ReleaseAuthRequest(ctx, id); err != nil {
		return fmt.Errorf("releasing shared %s: %w", k.What, err)
	}
	return nil
}

// Decide stores the decision of claimed request id: its status and
// outcome (encoded as JSON), kept until keep (store.DecideAuthRequest).
// When it cannot be stored the claim stays until it lapses, or the caller
// releases it.
func (k Kind[D]) Decide(ctx context.Context, id, status string, outcome any, keep time.Time) error {
	data, err := json.Marshal(outcome)
	if err == nil {
		err = k.Store.DecideAuthRequest(ctx, id, status, data, keep)
	}
	if err != nil {
		return fmt.Errorf("storing the decision of %s: %w", k.What, err)
	}
	return nil
}

// Outcome decodes a decision's outcome (from a row or a store.AuthDecision)
// into an O; an empty outcome is O's zero value.
func Outcome[O any](data []byte) (O, error) {
	var o O
	if len(data) == 0 {
		return o, nil
	}
	if err := json.Unmarshal(data, &o); err != nil {
		return o, fmt.Errorf("decoding a decision's outcome: %w", err)
	}
	return o, nil
}
