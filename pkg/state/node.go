package state

import (
	"net/netip"
	"slices"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Node is an immutable snapshot of one node. A change replaces the snapshot
// with a modified copy, so readers holding an old pointer (a map session
// building a full map, an encoder) never see a half-applied change.
type Node struct {
	ID             ids.NodeID
	MachineKey     key.MachinePublic
	NodeKey        key.NodePublic
	DiscoKey       key.DiscoPublic
	Endpoints      []netip.AddrPort
	HomeDERP       int
	Hostinfo       *tailcfg.Hostinfo // treat as read-only
	IPv4, IPv6     netip.Addr
	Hostname       string
	GivenName      string
	UserID         ids.UserID // 0 for tagged nodes
	Tags           []string
	Ephemeral      bool
	AuthKeyID      ids.PreAuthKeyID
	RegisterMethod string
	Cap            tailcfg.CapabilityVersion
	CreatedAt      time.Time
	LastSeen       time.Time
	Expiry         time.Time // zero: never expires
	ApprovedRoutes []netip.Prefix
	// PendingApproval: the node registered while node.require_approval
	// was on and no admin has approved it yet (ApproveNode). It has no
	// peers and is nobody's peer: the policy does not see it.
	PendingApproval bool
	// Version is the stored row's version (store.Node.Version). Several
	// servers compare it: a node's newer version is never replaced by an
	// older one arriving late.
	Version int64

	// Online is runtime state: at least one streaming map session is open.
	Online bool
	// PrimaryRoutes is runtime state: the subnet routes (never exit routes)
	// this node is the primary router for, sorted. Peers route those
	// prefixes through it. Only the state owner sets it; see routes.go.
	PrimaryRoutes []netip.Prefix
}

// clone returns a shallow copy whose slices may be replaced (not mutated in
// place) by the caller.
func (n *Node) clone() *Node {
	c := *n
	return &c
}

// Expired reports whether the node's key has expired at t.
func (n *Node) Expired(t time.Time) bool {
	return !n.Expiry.IsZero() && !t.Before(n.Expiry)
}

// Tagged reports whether the node is owned by tags rather than a user.
func (n *Node) Tagged() bool { return len(n.Tags) > 0 }

// Addresses returns the node's tailnet addresses as host prefixes.
func (n *Node) Addresses() []netip.Prefix {
	var out []netip.Prefix
	if n.IPv4.IsValid() {
		out = append(out, netip.PrefixFrom(n.IPv4, 32))
	}
	if n.IPv6.IsValid() {
		out = append(out, netip.PrefixFrom(n.IPv6, 128))
	}
	return out
}

// AnnouncedRoutes returns the routes the node advertises in its host info
// (Hostinfo.RoutableIPs), masked, sorted and without duplicates.
func (n *Node) AnnouncedRoutes() []netip.Prefix {
	if n.Hostinfo == nil || len(n.Hostinfo.RoutableIPs) == 0 {
		return nil
	}
	out := make([]netip.Prefix, 0, len(n.Hostinfo.RoutableIPs))
	for _, r := range n.Hostinfo.RoutableIPs {
		if r.IsValid() {
			out = append(out, r.Masked())
		}
	}
	return sortRoutes(out)
}

// ServedRoutes returns the routes the node both advertises and has
// approved: the routes it may serve, subnet and exit routes alike.
func (n *Node) ServedRoutes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range n.AnnouncedRoutes() {
		if slices.Contains(n.ApprovedRoutes, r) {
			out = append(out, r)
		}
	}
	return out
}

// SubnetRoutes returns the served routes that are not exit routes; peers
// receive those through the primary router of each prefix.
func (n *Node) SubnetRoutes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range n.ServedRoutes() {
		if !IsExitRoute(r) {
			out = append(out, r)
		}
	}
	return out
}

// ExitRoutes returns the served exit routes (0.0.0.0/0, ::/0); a node with
// any is an exit node.
func (n *Node) ExitRoutes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range n.ServedRoutes() {
		if IsExitRoute(r) {
			out = append(out, r)
		}
	}
	return out
}

// IsExitRoute reports whether r is a default route, 0.0.0.0/0 or ::/0.
func IsExitRoute(r netip.Prefix) bool { return r.IsValid() && r.Bits() == 0 }

// Exit routes: Tailscale treats the pair as one "exit node" switch.
var (
	exitRouteV4 = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	exitRouteV6 = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
)

// NormalizeRoutes masks routes, sorts them, drops duplicates and, as
// Headscale does, turns either exit route into the pair: clients mark a
// peer as an exit node only when both default routes are present.
func NormalizeRoutes(routes []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(routes)+1)
	for _, r := range routes {
		if !r.IsValid() {
			continue
		}
		if IsExitRoute(r) {
			out = append(out, exitRouteV4, exitRouteV6)
			continue
		}
		out = append(out, r.Masked())
	}
	return sortRoutes(out)
}

// sortRoutes sorts routes in place and drops duplicates.
func sortRoutes(routes []netip.Prefix) []netip.Prefix {
	slices.SortFunc(routes, netip.Prefix.Compare)
	return slices.Compact(routes)
}

// User is the in-memory view of a user, enough to build UserProfiles and
// to compile the policy.
type User struct {
	ID            ids.UserID
	Name          string
	DisplayName   string
	Email         string
	ProfilePicURL string
	// Provider and ProviderID identify the user's identity at an identity
	// provider (OIDC: "oidc" and the issuer joined with the subject); ""
	// for users created with the CLI.
	Provider   string
	ProviderID string
	// Groups are the groups the identity provider put the user in at the
	// last login, sorted, without duplicates; policies name them as
	// "oidcgroup:<group>".
	Groups    []string
	CreatedAt time.Time
}

// ChangeKind says what a Change means for map sessions.
type ChangeKind int

// The kinds of change the state owner emits.
const (
	// NodeAdded: a new node; peers learn it in PeersChanged.
	NodeAdded ChangeKind = iota + 1
	// NodeUpdated: the node's peer view changed beyond what a patch can
	// express (hostinfo, name, tags, addresses); peers get the whole node.
	NodeUpdated
	// NodePatched: endpoints, home DERP, disco key, node key, online,
	// last-seen or key expiry changed; peers get a small PeerChange.
	NodePatched
	// NodeRemoved: the node is gone; peers drop it, its sessions close.
	NodeRemoved
	// UserUpdated: a user's profile changed.
	UserUpdated
	// PolicyChanged: the compiled policy changed (a new policy, or nodes,
	// users or tags it refers to changed); sessions compare OldPolicy with
	// Policy for their node and get new filters, SSH policy and peers.
	PolicyChanged
	// Heartbeat carries no change: it proves to the watchdog that the
	// change path (state loop, state lock, sink) still moves. Sinks must
	// pass through their delivery lock and otherwise ignore it.
	Heartbeat
)

// String names the kind for logs.
func (k ChangeKind) String() string {
	switch k {
	case NodeAdded:
		return "node-added"
	case NodeUpdated:
		return "node-updated"
	case NodePatched:
		return "node-patched"
	case NodeRemoved:
		return "node-removed"
	case UserUpdated:
		return "user-updated"
	case PolicyChanged:
		return "policy-changed"
	case Heartbeat:
		return "heartbeat"
	}
	return "unknown"
}

// Change describes one state change for the sessions it affects.
type Change struct {
	Kind ChangeKind
	// Node is the snapshot after the change (for NodeRemoved, the last one).
	Node *Node
	// Patch is set for NodePatched.
	Patch *tailcfg.PeerChange
	// Self is set when the node's own sessions must get a new self node.
	Self bool
	// User is set for UserUpdated and, for NodeAdded, carries the owner so
	// peers can add its profile.
	User *User
	// At is when the change happened, for change-to-delivery latency.
	At time.Time
	// Policy is the compiled policy in force after the change (nil: none,
	// every node sees every other); sinks deliver node changes only to
	// sessions whose node may see the changed node.
	Policy *policy.Compiled
	// OldPolicy, Nodes and Users are set for PolicyChanged: the
	// compilation before, and every node and user now.
	OldPolicy *policy.Compiled
	Nodes     []*Node
	Users     map[ids.UserID]*User
	// Affected, when not nil, limits a PolicyChanged that came from node
	// changes to the nodes whose view may differ (see PolicyAffects).
	Affected []*policy.Affected
	// ChangedNodes, when not nil, says the PolicyChanged came only from
	// changes to these nodes, each of which was also emitted as its own
	// NodeAdded, NodeUpdated or NodeRemoved (carrying the new policy):
	// visibility between other nodes is unchanged, so sinks compare peer
	// sets for these nodes only.
	ChangedNodes []ids.NodeID
}

// Sink receives every change in order. Apply is called with the state lock
// held, so it must be quick, must never block on a client, and must not call
// back into State.
type Sink interface {
	Apply(Change)
}

// Snapshot is a consistent picture of the tailnet taken at one instant.
type Snapshot struct {
	Self  *Node
	Peers []*Node // only those Self may see under Policy, by ID
	// Policy is the compiled policy in force (nil: none).
	Policy *policy.Compiled
	Users  map[ids.UserID]*User
}

// keepLiveFields copies from cur, the node in memory now, onto n, a copy
// about to replace it after a store write, the fields that move on in memory
// without a write and so may have changed while the write was in flight:
//   - runtime state, never stored: Online, PrimaryRoutes;
//   - what map sessions update between writes: LastSeen, Endpoints,
//     DiscoKey, HomeDERP;
//   - what the client reports, Hostinfo, Hostname and Cap, unless the write
//     was a registration (registered), which sets them itself.
//
// Every other field is the write's own. It is the one list of such fields:
// TestNodeFieldClasses classifies every Node field against it.
func keepLiveFields(n, cur *Node, registered bool) {
	n.Online, n.PrimaryRoutes = cur.Online, cur.PrimaryRoutes
	n.LastSeen, n.Endpoints, n.DiscoKey, n.HomeDERP = cur.LastSeen, cur.Endpoints, cur.DiscoKey, cur.HomeDERP
	if !registered {
		n.Hostinfo, n.Hostname, n.Cap = cur.Hostinfo, cur.Hostname, cur.Cap
	}
}
