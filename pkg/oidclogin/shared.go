package oidclogin

// Logins shared by the servers of one tailnet (cluster.enabled, Share).
// Behind a load balancer the browser's redirect to the provider, the
// provider's callback and the confirmation form may each reach a
// different server, so a login in progress (its state's hash, nonce, PKCE
// verifier and what it is for) and a login waiting for confirmation (its
// token's hash, the identity and the auth ID) are rows of the store's
// auth_requests instead of entries in memory, each taken once by the
// server its next step reaches. The registration or SSH check the login
// is for is itself shared (pendingreg, sshcheck). Without Share a single
// server keeps them in memory, as before.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/hsctl/headscale/pkg/authrows"
	"github.com/hsctl/headscale/pkg/store"
)

// Kinds of the store's auth_requests rows this package writes.
const (
	FlowKind    = "oidc_flow"
	ConfirmKind = "oidc_confirm"
)

// Share makes c keep logins in progress, and the pages built on c logins
// waiting for confirmation, in st instead of memory, for the other
// servers of the tailnet. Call it before c is used.
func (c *Client) Share(st *store.Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shared = st
}

// sharedID is the row ID of a secret (a state or a confirmation token):
// a prefix and its SHA-256, so the database never holds the secret a
// browser presents.
func sharedID(prefix, secret string) string {
	h := sha256.Sum256([]byte(secret))
	return prefix + hex.EncodeToString(h[:])
}

// sharedFlow is a flow as stored.
type sharedFlow struct {
	Key      string    `json:"key"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier,omitempty"`
	Started  time.Time `json:"started"`
}

// take takes the row of k for id; its value and false when there is
// none (or it expired by now).
func take[D any](ctx context.Context, k authrows.Kind[D], id string, now time.Time) (D, bool, error) {
	row, err := k.Take(ctx, id, now)
	if errors.Is(err, store.ErrNotFound) {
		return row.Value, false, nil
	}
	return row.Value, err == nil, err
}

// flowRows are the rows of logins in progress in st.
func flowRows(st *store.Store) authrows.Kind[sharedFlow] {
	return authrows.Kind[sharedFlow]{Store: st, Name: FlowKind, What: "OIDC login"}
}

// addSharedFlow stores the login f for state.
func (c *Client) addSharedFlow(ctx context.Context, state string, f *flow) error {
	return flowRows(c.shared).Put(ctx, sharedID("oidc-flow-", state),
		sharedFlow{Key: f.key, Nonce: f.nonce, Verifier: f.verifier, Started: f.started}, f.started, f.started.Add(FlowTimeout))
}

// takeSharedFlow takes the login for state (nil when unknown or expired).
func (c *Client) takeSharedFlow(ctx context.Context, state string) (*flow, error) {
	sf, ok, err := take(ctx, flowRows(c.shared), sharedID("oidc-flow-", state), c.now())
	if !ok {
		return nil, err
	}
	return &flow{key: sf.Key, nonce: sf.Nonce, verifier: sf.Verifier, started: sf.Started}, nil
}

// sharedConfirm is a confirmation as stored.
type sharedConfirm struct {
	AuthID   string    `json:"auth_id"`
	Identity Identity  `json:"identity"`
	Created  time.Time `json:"created"`
}

// confirmRows are the rows of logins waiting for confirmation in st.
func confirmRows(st *store.Store) authrows.Kind[sharedConfirm] {
	return authrows.Kind[sharedConfirm]{Store: st, Name: ConfirmKind, What: "OIDC confirmation"}
}

// addConfirm keeps cf under token: in memory, or shared.
func (p *Pages) addConfirm(ctx context.Context, token string, cf *confirmation) error {
	if p.c.shared != nil {
		return confirmRows(p.c.shared).Put(ctx, sharedID("oidc-confirm-", token),
			sharedConfirm{AuthID: cf.authID, Identity: cf.id, Created: cf.created}, cf.created, cf.created.Add(confirmTimeout))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for t, old := range p.confirms {
		if cf.created.Sub(old.created) > confirmTimeout {
			delete(p.confirms, t)
		}
	}
	if len(p.confirms) >= maxFlows {
		return errTooManyConfirms
	}
	p.confirms[token] = cf
	return nil
}

// errTooManyConfirms: too many logins wait for confirmation in memory.
var errTooManyConfirms = errors.New("too many logins wait to be confirmed")

// takeConfirm removes and returns the confirmation for token (nil when
// unknown).
func (p *Pages) takeConfirm(ctx context.Context, token string) (*confirmation, error) {
	if p.c.shared != nil {
		sc, ok, err := take(ctx, confirmRows(p.c.shared), sharedID("oidc-confirm-", token), p.c.now())
		if !ok {
			return nil, err
		}
		return &confirmation{authID: sc.AuthID, id: sc.Identity, created: sc.Created}, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cf := p.confirms[token]
	delete(p.confirms, token)
	return cf, nil
}
