// Package mapper turns the state owner's node snapshots into the map
// responses Tailscale clients read, and delivers changes to open map
// sessions.
//
// Changes are delivered in rounds: what arrived since the last round is
// coalesced per node and encoded once per distinct view, and the same bytes
// (and the same compressed bytes) go to every session with that view; each
// session has a bounded queue and a slow session is resynchronised from a
// fresh snapshot instead of holding anyone else up. See
// docs/architecture.md.
package mapper

import (
	"maps"
	"net/netip"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// TaggedDevicesUserID is the user ID Tailscale shows for tagged nodes.
const TaggedDevicesUserID = tailcfg.UserID(2147455555)

// Options describes what every map carries besides nodes.
type Options struct {
	BaseDomain string
	// DNS returns the DNS configuration sent in full maps; nil (or a nil
	// result) sends none. It is a function so a reload can change it.
	DNS func() *tailcfg.DNSConfig
	// DERPMap returns the current DERP map.
	DERPMap func() *tailcfg.DERPMap
	// Taildrop gives every node file sharing (taildrop.enabled).
	Taildrop bool
	// AutoUpdate is the default-auto-update value every node gets
	// (auto_update.enabled).
	AutoUpdate bool
	// RandomizeClientPort gives every node randomize-client-port
	// (randomize_client_port; the policy's randomizeClientPort does the
	// same).
	RandomizeClientPort bool
	// CertDomains offers each node a certificate for its own MagicDNS
	// name (DNSConfig.CertDomains, what `tailscale cert` needs): on when
	// the server can set the names' challenge records
	// (dns.certificates).
	CertDomains bool
}

// Mapper builds wire objects from state snapshots. It holds no mutable
// state and is safe for concurrent use.
type Mapper struct {
	opts Options
	// baseCaps are the capabilities every node gets (BaseCapabilities);
	// read only.
	baseCaps tailcfg.NodeCapMap
}

// New returns a Mapper.
func New(opts Options) *Mapper { return &Mapper{opts: opts, baseCaps: BaseCapabilities(opts)} }

// BaseCapabilities are the capabilities every node finds in its own
// CapMap, the ones Headscale gives every node: admin (clients show their
// admin features), SSH (Tailscale SSH may run), file sharing while
// opts.Taildrop, default-auto-update with the JSON value opts.AutoUpdate,
// and randomize-client-port with opts.RandomizeClientPort. Policy
// nodeAttrs are laid over them. Peers' entries carry none of them, as in
// Headscale 0.29 and Tailscale: clients read these from their own node
// only.
func BaseCapabilities(opts Options) tailcfg.NodeCapMap {
	caps := tailcfg.NodeCapMap{
		tailcfg.CapabilityAdmin:           nil,
		tailcfg.CapabilitySSH:             nil,
		tailcfg.NodeAttrDefaultAutoUpdate: {"false"},
	}
	if opts.AutoUpdate {
		caps[tailcfg.NodeAttrDefaultAutoUpdate] = []tailcfg.RawMessage{"true"}
	}
	if opts.Taildrop {
		caps[tailcfg.CapabilityFileSharing] = nil
	}
	if opts.RandomizeClientPort {
		caps[tailcfg.NodeAttrRandomizeClientPort] = nil
	}
	return caps
}

// AllowAll is the packet filter used while no policy exists.
var allowAllRules = []tailcfg.FilterRule{{
	SrcIPs:   []string{"*"},
	DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: tailcfg.PortRangeAny}},
}}

// FQDN returns a node's MagicDNS name with the trailing dot.
func (m *Mapper) FQDN(n *state.Node) string {
	if m.opts.BaseDomain == "" {
		return n.GivenName + "."
	}
	return n.GivenName + "." + m.opts.BaseDomain + "."
}

// PeerNode is the node as its peers see it (its host info without
// NetInfo). Besides its addresses, its
// AllowedIPs carry the subnet routes it is the primary router for (also
// listed in PrimaryRoutes) and, for an approved exit node, the exit
// routes, which clients show as an exit node option.
func (m *Mapper) PeerNode(n *state.Node, now time.Time) *tailcfg.Node {
	hi := n.Hostinfo
	if hi == nil {
		hi = &tailcfg.Hostinfo{Hostname: n.Hostname}
	}
	if hi.NetInfo != nil {
		// A node's network conditions are its own (peers learn its home
		// DERP from HomeDERP); they change without telling peers, so a
		// peer's copy would only be stale.
		c := *hi
		c.NetInfo = nil
		hi = &c
	}
	addrs := n.Addresses()
	exit := n.ExitRoutes()
	allowed := make([]netip.Prefix, 0, len(addrs)+len(n.PrimaryRoutes)+len(exit))
	allowed = append(append(append(allowed, addrs...), n.PrimaryRoutes...), exit...)
	tn := &tailcfg.Node{
		ID:                tailcfg.NodeID(n.ID),
		StableID:          tailcfg.StableNodeID(n.ID.String()),
		Name:              m.FQDN(n),
		User:              tailcfg.UserID(n.UserID),
		Key:               n.NodeKey,
		KeyExpiry:         n.Expiry,
		DiscoKey:          n.DiscoKey,
		Addresses:         addrs,
		AllowedIPs:        allowed,
		PrimaryRoutes:     n.PrimaryRoutes,
		Endpoints:         n.Endpoints,
		HomeDERP:          n.HomeDERP,
		Hostinfo:          hi.View(),
		Created:           n.CreatedAt,
		Cap:               n.Cap,
		Tags:              n.Tags,
		MachineAuthorized: !n.PendingApproval,
		Expired:           n.Expired(now),
	}
	if n.Tagged() {
		tn.User = TaggedDevicesUserID
	}
	online := n.Online
	tn.Online = &online
	if !online && !n.LastSeen.IsZero() {
		ls := n.LastSeen
		tn.LastSeen = &ls
	}
	return tn
}

// SelfNode is the node as it sees itself.
func (m *Mapper) SelfNode(n *state.Node, now time.Time, c *policy.Compiled) *tailcfg.Node {
	tn := m.PeerNode(n, now)
	// Peers are not told each other's machine keys (clients use a peer's
	// node and disco keys only; leaving it out saves about a quarter of
	// every compressed peer entry); the node itself gets its own.
	tn.Machine = n.MachineKey
	tn.CapMap = maps.Clone(m.baseCaps)
	if c != nil {
		maps.Copy(tn.CapMap, c.NodeCapMap(n.ID))
	}
	return tn
}

// Profile is the UserProfile peers show for a user, or for the tagged
// pseudo-user when u is nil.
func Profile(u *state.User) tailcfg.UserProfile {
	if u == nil {
		return tailcfg.UserProfile{ID: TaggedDevicesUserID, LoginName: "tagged-devices", DisplayName: "Tagged Devices"}
	}
	display := u.DisplayName
	if display == "" {
		display = u.Name
	}
	login := u.Name
	if u.Email != "" {
		login = u.Email
	}
	return tailcfg.UserProfile{ID: tailcfg.UserID(u.ID), LoginName: login, DisplayName: display, ProfilePicURL: u.ProfilePicURL}
}

// Filter returns the packet filter node id receives under the compiled
// policy c; with no policy, every node may reach every other.
func Filter(c *policy.Compiled, id ids.NodeID) []tailcfg.FilterRule {
	if c == nil {
		return allowAllRules
	}
	return c.Filter(id)
}

// SSHPolicy returns the SSH policy node id receives under c (nil: none).
func SSHPolicy(c *policy.Compiled, id ids.NodeID) *tailcfg.SSHPolicy {
	if c == nil {
		return nil
	}
	return c.SSH(id)
}

// fullResponse is every part of a full map except the peer list, which the
// caller splices in from shared encodings.
func (m *Mapper) fullResponse(snap state.Snapshot, now time.Time) *tailcfg.MapResponse {
	profiles := make([]tailcfg.UserProfile, 0, 4)
	seen := map[tailcfg.UserID]bool{}
	// Most peers share their owner with the peer before them: skip the
	// lookups for those.
	var last *state.Node
	add := func(n *state.Node) {
		if last != nil && n.Tagged() == last.Tagged() && (n.Tagged() || n.UserID == last.UserID) {
			return
		}
		last = n
		var u *state.User
		if !n.Tagged() {
			u = snap.Users[n.UserID]
			if u == nil {
				return
			}
		}
		p := Profile(u)
		if !seen[p.ID] {
			seen[p.ID] = true
			profiles = append(profiles, p)
		}
	}
	add(snap.Self)
	for _, p := range snap.Peers {
		add(p)
	}
	t := now.UTC()
	ssh := SSHPolicy(snap.Policy, snap.Self.ID)
	if ssh == nil {
		// Clients read a nil SSH policy as "unchanged": a resync's full map
		// must take back a policy the stream sent before.
		ssh = &tailcfg.SSHPolicy{}
	}
	resp := &tailcfg.MapResponse{
		Node:            m.SelfNode(snap.Self, now, snap.Policy),
		Domain:          m.opts.BaseDomain,
		CollectServices: "false",
		PacketFilters:   map[string][]tailcfg.FilterRule{"base": Filter(snap.Policy, snap.Self.ID)},
		SSHPolicy:       ssh,
		UserProfiles:    profiles,
		ControlTime:     &t,
		Debug:           &tailcfg.Debug{DisableLogTail: true},
	}
	if m.opts.DERPMap != nil {
		resp.DERPMap = m.opts.DERPMap()
	}
	resp.DNSConfig = m.DNSFor(snap.Self)
	return resp
}

// CertDomain is the name n may get a certificate for: its MagicDNS name
// without the trailing dot, or "" when CertDomains is off.
func (m *Mapper) CertDomain(n *state.Node) string {
	if !m.opts.CertDomains || n == nil || m.opts.BaseDomain == "" {
		return ""
	}
	return strings.TrimSuffix(m.FQDN(n), ".")
}

// DNSFor is the DNS configuration self receives: the shared one (nil when
// there is none), with self's certificate domain when CertDomains is on.
func (m *Mapper) DNSFor(self *state.Node) *tailcfg.DNSConfig {
	if m.opts.DNS == nil {
		return nil
	}
	return m.withCertDomain(m.opts.DNS(), m.CertDomain(self))
}

// withCertDomain is base with CertDomains set to domain (a copy; base is
// shared), or base itself when domain is "".
func (m *Mapper) withCertDomain(base *tailcfg.DNSConfig, domain string) *tailcfg.DNSConfig {
	if base == nil || domain == "" {
		return base
	}
	c := *base
	c.CertDomains = []string{domain}
	return &c
}
