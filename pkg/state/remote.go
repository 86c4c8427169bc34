package state

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// Changes stored by other servers of the same tailnet (several servers on
// one PostgreSQL database). The cluster's change log tells a server what
// the others wrote; ApplyRemote puts it in memory through the same paths a
// local change takes after its write (addNodeLocked, replaceNodeLocked,
// removeNodeLocked, applyUserLocked, LoadStoredPolicy), so a remote change
// costs each server the work the same local change costs, and its map
// sessions receive the same Changes.
//
// What a remote change does not do is what its origin already did: write
// to the store, apply autoApprovers (the origin stored the approved
// routes), log the event at Info, or schedule an ephemeral node's
// deletion.

// RemoteChange is one fact another server stored. Exactly one of its
// fields says what happened.
type RemoteChange struct {
	// Node is a node as stored: registered, re-registered in place
	// (Registered) or edited.
	Node *store.Node
	// Registered says Node was (re-)registered by its client: its host
	// info and capability version are the row's, not the ones held.
	Registered bool
	// NodeDeleted is a node that was deleted.
	NodeDeleted ids.NodeID
	// User is a user as stored: created or changed.
	User *store.User
	// UserDeleted is a user that was deleted.
	UserDeleted ids.UserID
	// Policy says the stored policy changed: the newest row is loaded.
	Policy bool
	// Live is a node's presence or report on server Origin.
	Live *LiveFact
	// ServerGone is a server (by ID) that stopped or was declared dead
	// at GoneAt: its sessions are forgotten.
	ServerGone string
	GoneAt     time.Time
	// Origin is the server that made the change (Live).
	Origin string
	// Primary is the jobs server's decision of a subnet route's primary
	// router (Node 0: none).
	Primary *Primary
}

// Primary is a subnet route's primary router.
type Primary struct {
	Prefix netip.Prefix
	Node   ids.NodeID
}

// ApplyRemote applies changes other servers stored, in the order given,
// under one hold of the state lock, then emits the policy change once (a
// batch of remote changes costs one PolicyChanged, not one per change).
// When the stored policy changed it is loaded afterwards, outside the
// lock, as a reload would. A change of something already gone (an edit of
// a node deleted since) is skipped.
//
// It reports the first error: a node row that cannot be read or a policy
// that no longer loads; the other changes are applied regardless.
func (s *State) ApplyRemote(ctx context.Context, changes []RemoteChange) error {
	var errs []error
	policy := false
	s.mu.Lock()
	for _, c := range changes {
		switch {
		case c.Node != nil:
			if err := s.applyRemoteNodeLocked(*c.Node, c.Registered); err != nil {
				errs = append(errs, err)
			}
		case c.NodeDeleted != 0:
			if n, ok := s.nodes[c.NodeDeleted]; ok {
				s.removeNodeLocked(n)
			}
		case c.User != nil:
			nu := userFromStore(*c.User)
			s.applyUserLocked(s.users[nu.ID], nu)
		case c.UserDeleted != 0:
			if _, ok := s.users[c.UserDeleted]; ok {
				s.removeUserLocked(c.UserDeleted)
			}
		case c.Policy:
			policy = true
		case c.Live != nil:
			s.applyRemoteLiveLocked(c.Origin, *c.Live)
		case c.Primary != nil:
			s.applyPrimaryLocked(c.Primary.Prefix, c.Primary.Node)
		case c.ServerGone != "":
			s.serverGoneLocked(c.ServerGone, c.GoneAt)
		}
	}
	s.emitPolicyLocked()
	s.mu.Unlock()
	if policy {
		if _, err := s.LoadStoredPolicy(ctx, false); err != nil {
			// As with a reload that fails: the policy in force stays.
			errs = append(errs, fmt.Errorf("loading the policy another server stored: %w", err))
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// applyRemoteNodeLocked puts the stored node sn in memory: a node not
// held yet is added (its addresses taken from the allocator), a held one
// replaced.
func (s *State) applyRemoteNodeLocked(sn store.Node, registered bool) error {
	n, err := nodeFromStore(sn)
	if err != nil {
		return fmt.Errorf("node %d another server stored: %w", sn.ID, err)
	}
	old, ok := s.nodes[n.ID]
	if !ok && n.Version > 1 {
		// Not a new row (those are at version 1), so this server held
		// the node, and deleted it after the other server's write: the
		// deletion is this server's own record, which it does not read
		// back. Node IDs are never used again.
		return nil
	}
	if !ok {
		s.opts.Alloc.Reserve(n.IPv4, n.IPv6)
		s.addNodeLocked(n)
		return nil
	}
	if old.IPv4 != n.IPv4 || old.IPv6 != n.IPv6 {
		s.opts.Alloc.Release(old.IPv4, old.IPv6)
		s.opts.Alloc.Reserve(n.IPv4, n.IPv6)
	}
	s.replaceNodeLocked(old, n, registered)
	return nil
}
