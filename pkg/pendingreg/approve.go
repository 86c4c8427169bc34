package pendingreg

import (
	"context"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
)

// Approval says for whom a registration is completed.
type Approval struct {
	// User owns the node (unless it advertises tags the user owns under
	// the policy's tagOwners: then its tags own it).
	User ids.UserID
	// Expiry of the node's key; zero keeps what the client asked for,
	// or else the server's node.expiry. OIDC's use_expiry_from_token
	// passes the token's expiry here.
	Expiry time.Time
	// Method is the node's register method: "cli" (the default, for the
	// CLI and the API) or "oidc".
	Method string
}

// Approve completes the pending registration id for a.User: the node is
// registered (or re-registered) in st with state.State.RegisterInteractive,
// and the client waiting on id is answered within moments. It is the one
// call the CLI/API handlers and an OIDC callback make. Errors: ErrNotFound,
// ErrDone, ErrBusy, or RegisterInteractive's (state.ErrUnknownUser, a tag
// the user does not own, the database); on those the registration stays
// pending.
func (g *Registry) Approve(ctx context.Context, st *state.State, id string, a Approval) (*state.Node, error) {
	var n *state.Node
	_, err := g.Complete(id, func(r Registration) (ids.NodeID, error) {
		expiry := a.Expiry
		if expiry.IsZero() {
			expiry = r.Expiry
		}
		var err error
		n, err = st.RegisterInteractive(ctx, state.InteractiveParams{
			Machine:  r.Machine,
			NodeKey:  r.NodeKey,
			Hostinfo: r.Hostinfo,
			Cap:      r.Cap,
			User:     a.User,
			Expiry:   expiry,
			Method:   a.Method,
		})
		if err != nil {
			return 0, fmt.Errorf("registering node: %w", err)
		}
		return n.ID, nil
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}
