package state

// The access-control policy: the state owner compiles it against the nodes
// and users it holds, so every snapshot and every change carries the
// compiled policy that was in force when it was taken.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
)

// ErrPolicyRejected wraps a policy that failed to parse or compile or whose
// tests failed; the policy in force (and the one stored) is unchanged.
var ErrPolicyRejected = errors.New("policy rejected")

// ErrTagNotOwned is returned when tags are requested that the policy's
// tagOwners do not grant.
var ErrTagNotOwned = errors.New("tag not permitted by tagOwners")

// State is the only component that stores a policy in the database and
// puts a policy in force. Every such change holds policyChangeMu for its
// whole course (read or check, write, swap), so two changes never
// interleave and a reload never applies an older text over a newer one.
// StorePolicy writes only a policy that compiled, and puts it in force in
// a step that cannot fail, or deletes the row again: the policy stored and
// the one in force never stay apart.

// ParsePolicy parses a policy text; "" means no policy (nil). origin
// names the text in errors ("" for text from the API).
func ParsePolicy(text, origin string) (*policy.Policy, error) {
	if text == "" {
		return nil, nil
	}
	p, err := policy.Parse([]byte(text))
	if err != nil {
		if origin == "" {
			origin = "policy"
		}
		return nil, parseError{policy.InFile(origin, err)}
	}
	return p, nil
}

// parseError is a policy text that does not parse: an ErrPolicyRejected
// whose message is the parser's alone (line:column of each problem).
type parseError struct{ err error }

func (e parseError) Error() string   { return e.err.Error() }
func (e parseError) Unwrap() []error { return []error{ErrPolicyRejected, e.err} }

// SetPolicy compiles p against the current nodes and users, runs its tests
// and, only if that succeeds, puts it in force: sessions whose filter, SSH
// policy or peers change are updated. nil means no policy (every node may
// reach every other). With enforceTests false, failing tests become a
// warning (used at start-up). It returns compile warnings. Nothing is
// stored and PolicyText reports no text: servers use LoadPolicyText,
// LoadStoredPolicy or StorePolicy.
func (s *State) SetPolicy(p *policy.Policy, enforceTests bool) ([]string, error) {
	s.policyChangeMu.Lock()
	defer s.policyChangeMu.Unlock()
	return s.applyPolicy(p, "", time.Time{}, enforceTests)
}

// LoadPolicyText puts the policy text read from origin (the policy file)
// in force, as SetPolicy does; updatedAt is reported by PolicyText.
func (s *State) LoadPolicyText(text, origin string, updatedAt time.Time, enforceTests bool) ([]string, error) {
	s.policyChangeMu.Lock()
	defer s.policyChangeMu.Unlock()
	p, err := ParsePolicy(text, origin)
	if err != nil {
		return nil, err
	}
	warnings, err := s.applyPolicy(p, text, updatedAt, enforceTests)
	if err != nil && origin != "" {
		err = fmt.Errorf("%s: %w", origin, err)
	}
	return warnings, err
}

// LoadStoredPolicy puts the newest policy stored in the database in force
// (database mode: at start-up and on reload), as SetPolicy does; no row
// means no policy.
func (s *State) LoadStoredPolicy(ctx context.Context, enforceTests bool) ([]string, error) {
	s.policyChangeMu.Lock()
	defer s.policyChangeMu.Unlock()
	text, updatedAt, err := s.st.GetPolicy(ctx)
	if errors.Is(err, store.ErrNotFound) {
		text, updatedAt, err = "", time.Time{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the stored policy: %w", err)
	}
	p, err := ParsePolicy(text, "database")
	if err != nil {
		return nil, err
	}
	warnings, err := s.applyPolicy(p, text, updatedAt, enforceTests)
	if err != nil {
		err = fmt.Errorf("database: %w", err)
	}
	return warnings, err
}

// StorePolicy checks text (parse, compile against the current nodes and
// users, run its tests), stores it in the database as the newest policy
// and puts it in force (database mode). Either both happen or neither:
// if nodes or users changed while the text was written and the policy no
// longer compiles against them, the row is deleted again. A rejected policy
// is an ErrPolicyRejected; any other error is a database fault. It returns
// when the policy was stored.
func (s *State) StorePolicy(ctx context.Context, text string) (time.Time, error) {
	s.policyChangeMu.Lock()
	defer s.policyChangeMu.Unlock()
	p, err := ParsePolicy(text, "")
	if err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	c, _, err := s.compileLocked(p, true)
	inputs := s.policyInputsGen
	s.mu.Unlock()
	if err != nil {
		return time.Time{}, err
	}
	id, updatedAt, err := s.st.InsertPolicy(ctx, text)
	if err != nil {
		return time.Time{}, fmt.Errorf("storing the policy: %w", err)
	}
	if s.afterPolicyWrite != nil {
		s.afterPolicyWrite()
	}
	s.mu.Lock()
	if s.policyInputsGen != inputs {
		// Nodes or users changed since the check: compile again
		// against them.
		c, _, err = s.compileLocked(p, true)
	}
	if err == nil {
		s.swapPolicyLocked(p, c, text, updatedAt)
	}
	s.mu.Unlock()
	if err == nil {
		return updatedAt, nil
	}
	// The policy no longer compiles: take the row back so the stored
	// policy is again the one in force. The request's context may be
	// done; the rollback must still run.
	if derr := s.st.DeletePolicy(context.WithoutCancel(ctx), id); derr != nil {
		s.log.Error("a stored policy could not be put in force nor deleted: the database holds a policy that is not in force until the next reload", "policy_row", id, "err", derr)
		return time.Time{}, fmt.Errorf("policy stored but not put in force (%w), and deleting it failed: %w", err, derr)
	}
	return time.Time{}, err
}

// CheckPolicy compiles p against the current nodes and users and runs its
// tests without putting it in force.
func (s *State) CheckPolicy(p *policy.Policy) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, warnings, err := s.compileLocked(p, true)
	return warnings, err
}

// CheckPolicyText parses text and checks it as CheckPolicy does; nothing
// changes.
func (s *State) CheckPolicyText(text string) ([]string, error) {
	p, err := ParsePolicy(text, "")
	if err != nil {
		return nil, err
	}
	return s.CheckPolicy(p)
}

// Policy returns the policy in force (nil: none).
func (s *State) Policy() *policy.Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pol
}

// PolicyText returns the text of the policy in force ("" for none, or for
// a policy put in force by SetPolicy) and when it was stored or its file
// last changed.
func (s *State) PolicyText() (text string, updatedAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policyText, s.policyUpdatedAt
}

// applyPolicy compiles p and, if it compiles (and its tests pass when
// enforced), puts it in force. The caller holds policyChangeMu.
func (s *State) applyPolicy(p *policy.Policy, text string, updatedAt time.Time, enforceTests bool) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, warnings, err := s.compileLocked(p, enforceTests)
	if err != nil {
		return warnings, err
	}
	s.swapPolicyLocked(p, c, text, updatedAt)
	return warnings, nil
}

// swapPolicyLocked puts p, compiled as c against the current nodes and
// users, in force and tells the sessions. It cannot fail.
func (s *State) swapPolicyLocked(p *policy.Policy, c *policy.Compiled, text string, updatedAt time.Time) {
	old := s.compiled
	s.pol, s.compiled = p, c
	s.policyText, s.policyUpdatedAt = text, updatedAt
	s.emitLocked(Change{Kind: PolicyChanged, Policy: c, OldPolicy: old, Nodes: s.nodeListLocked(), Users: s.users})
}

// compileLocked compiles p and runs its tests. Without a policy it
// compiles none (nil) unless nodes may wait for approval (gated): then an
// allow-all compilation among the approved nodes.
func (s *State) compileLocked(p *policy.Policy, enforceTests bool) (*policy.Compiled, []string, error) {
	if p == nil && !s.gated {
		return nil, nil, nil
	}
	c, warnings, err := policy.CompileWithOptions(p, s.policyUsersLocked(), s.policyNodesLocked(), policy.CompileOptions{ServerURL: s.opts.ServerURL})
	if err != nil {
		return nil, warnings, fmt.Errorf("%w: %w", ErrPolicyRejected, err)
	}
	if p == nil {
		return c, nil, nil
	}
	if err := c.RunTests(); err != nil {
		if enforceTests {
			return nil, warnings, fmt.Errorf("%w: tests failed: %w", ErrPolicyRejected, err)
		}
		warnings = append(warnings, "the policy's tests fail (applied anyway at start-up): "+err.Error())
	}
	return c, warnings, nil
}

// recompileForLocked brings the policy in force up to date after a change
// to the set of nodes or users, or to a node's tags, owner, addresses or
// served routes (n is the node, or nil for a user change or several
// nodes). A node change is applied incrementally (policy.Compiled.Update
// recomputes only what the node touches and says which nodes' view may
// have changed); a user change recompiles everything. The node's own change
// is then emitted with the new compilation, and emitPolicyLocked tells the
// other sessions whose view changed. Without a policy there is nothing to
// do.
func (s *State) recompileForLocked(n *Node) {
	s.policyInputsGen++
	if s.pol == nil && !s.gated {
		return
	}
	var (
		c        *policy.Compiled
		aff      *policy.Affected
		warnings []string
		err      error
	)
	if n != nil && s.compiled != nil {
		c, aff, warnings, err = s.compiled.Update(s.policyUsersLocked(), s.policyNodesLocked(), []ids.NodeID{n.ID})
	} else {
		c, warnings, err = policy.CompileWithOptions(s.pol, s.policyUsersLocked(), s.policyNodesLocked(), policy.CompileOptions{ServerURL: s.opts.ServerURL})
	}
	if err != nil {
		// The policy compiled before; a node or user change should not
		// make it invalid, but if it does, keep the last good result.
		s.log.Error("recompiling the policy after a change failed; the previous compilation stays in force", "err", err)
		return
	}
	for _, w := range warnings {
		s.log.Debug("policy warning", "warning", w)
	}
	if s.pendingOld == nil {
		s.pendingOld = s.compiled
		s.pendingAff = s.pendingAff[:0]
		s.pendingIDs = s.pendingIDs[:0]
		s.pendingAll = false
	}
	switch {
	case aff == nil:
		s.pendingAll = true
	case aff.All():
		s.pendingAff = append(s.pendingAff, nil)
	default:
		s.pendingAff = append(s.pendingAff, aff)
	}
	if n != nil {
		s.pendingIDs = append(s.pendingIDs, n.ID)
	}
	s.compiled = c
}

// emitPolicyLocked sends the PolicyChanged that recompileForLocked left
// pending, if any, limited to the affected nodes when every recompile
// since the last one was incremental.
func (s *State) emitPolicyLocked() {
	if s.pendingOld == nil {
		return
	}
	old := s.pendingOld
	s.pendingOld = nil
	c := Change{Kind: PolicyChanged, Policy: s.compiled, OldPolicy: old, Nodes: s.nodeListLocked(), Users: s.users}
	if !s.pendingAll {
		c.ChangedNodes = slices.Clone(s.pendingIDs)
		if !slices.Contains(s.pendingAff, nil) {
			c.Affected = slices.Clone(s.pendingAff)
		}
	}
	s.emitLocked(c)
}

// policyUsersLocked returns the users as the policy sees them, in ID
// order. The slice is built once per change of the users and shared (it
// is never modified), so an incremental recompile after a node change
// sees at a glance that the users are the same.
func (s *State) policyUsersLocked() []policy.User {
	if s.policyUsers != nil {
		return s.policyUsers
	}
	out := make([]policy.User, 0, len(s.users))
	for _, u := range s.users {
		out = append(out, policyUser(u))
	}
	slices.SortFunc(out, func(a, b policy.User) int { return cmp.Compare(a.ID, b.ID) })
	s.policyUsers = out
	return out
}

func policyUser(u *User) policy.User {
	return policy.User{ID: u.ID, Name: u.Name, Email: u.Email, Groups: u.Groups}
}

// policyNodesLocked returns the nodes the policy sees: every node but
// those waiting for approval. This is the one place that keeps such a node
// out of every peer list, its own and the others', in full maps and
// changes alike: a node the compilation does not know sees no one and
// is seen by no one.
func (s *State) policyNodesLocked() []policy.Node {
	out := make([]policy.Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		if !n.PendingApproval {
			out = append(out, policyNode(n))
		}
	}
	return out
}

func policyNode(n *Node) policy.Node {
	// The policy sees the routes a node serves (advertised and
	// approved), as Headscale does: an approved route the node stopped
	// advertising attracts no rules.
	return policy.Node{ID: n.ID, UserID: n.UserID, Tags: n.Tags, IPv4: n.IPv4, IPv6: n.IPv6, Hostname: n.Hostname, ApprovedRoutes: n.ServedRoutes()}
}

func (s *State) nodeListLocked() []*Node {
	out := make([]*Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n)
	}
	return out
}

// checkTagsDefined requires, under a policy, that every tag an admin
// applies (directly or through a pre-auth key) is defined in tagOwners.
func (s *State) checkTagsDefined(tags []string) error {
	s.mu.Lock()
	p := s.pol
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	for _, t := range tags {
		if !p.TagDefined(t) {
			return fmt.Errorf("%w: %s is not defined in the policy's tagOwners", ErrTagNotOwned, t)
		}
	}
	return nil
}

// CheckTagOwners reports whether the policy lets a node owned by userID
// (0 for none) carry tags: every tag must be listed in tagOwners with that
// user (directly or through a group) or with a tag the node already holds.
// Without a policy there are no tag owners, so no tag is granted, as in
// Tailscale.
func (s *State) CheckTagOwners(userID ids.UserID, held, tags []string) error {
	s.mu.Lock()
	p := s.pol
	u := s.users[userID]
	s.mu.Unlock()
	if len(tags) == 0 {
		return nil
	}
	if p == nil {
		return fmt.Errorf("%w: there is no policy, so no tagOwners", ErrTagNotOwned)
	}
	var pu policy.User
	if u != nil {
		pu = policyUser(u)
	}
	for _, t := range tags {
		if !p.TagOwnerAllowed(t, pu, held) {
			return fmt.Errorf("%w: %s", ErrTagNotOwned, t)
		}
	}
	return nil
}

// CanSee reports whether node a may see node b under the policy in force.
func (c Change) CanSee(a, b ids.NodeID) bool {
	return c.Policy == nil || c.Policy.CanSee(a, b)
}

// PolicyAffects reports whether a PolicyChanged may change node id's view
// (its filter, SSH policy, capabilities or peers). Without an affected
// set, every node may be affected.
func (c Change) PolicyAffects(id ids.NodeID) bool {
	if c.Affected == nil {
		return true
	}
	for _, a := range c.Affected {
		if a.Has(id) {
			return true
		}
	}
	return false
}

// CompiledPolicy returns the compilation in force (nil: no policy).
func (s *State) CompiledPolicy() *policy.Compiled {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compiled
}
