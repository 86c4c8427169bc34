package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

// attrRule is a nodeAttrs entry: target aliases and capabilities.
type attrRule struct {
	targets []int32
	attrs   []tailcfg.NodeCapability
}

func (b *builder) compileNodeAttrs() {
	c, r, lineage := b.c, b.r, b.c.lineage
	w := c.world
	n := w.numSlots
	if len(c.pol.nodeAttrs) == 0 && !c.pol.randomizeClientPort {
		return
	}
	lineage.hasCaps = true
	lineage.randomizePort = c.pol.randomizeClientPort
	per := make([][]tailcfg.NodeCapability, n)
	if c.pol.randomizeClientPort {
		w.all.each(func(i int) { per[i] = append(per[i], tailcfg.NodeAttrRandomizeClientPort) })
	}
	for _, na := range c.pol.nodeAttrs {
		if len(na.attrs) == 0 {
			continue
		}
		ar := attrRule{}
		for _, a := range na.attrs {
			ar.attrs = append(ar.attrs, tailcfg.NodeCapability(a))
		}
		targets := newBitset(n)
		for _, t := range na.targets {
			res := r.resolve(t)
			ar.targets = append(ar.targets, res.listPos)
			targets.or(res.nodes)
		}
		lineage.attrs = append(lineage.attrs, ar)
		targets.each(func(i int) { per[i] = append(per[i], ar.attrs...) })
	}
	// Nodes with the same capabilities share one slice.
	interned := map[string][]tailcfg.NodeCapability{}
	b.nodeCaps = make([][]tailcfg.NodeCapability, n)
	for i, cs := range per {
		if len(cs) == 0 {
			continue
		}
		cs = normCaps(cs)
		key := capsKey(cs)
		if s, ok := interned[key]; ok {
			cs = s
		} else {
			interned[key] = cs
		}
		b.nodeCaps[i] = cs
	}
}

func normCaps(cs []tailcfg.NodeCapability) []tailcfg.NodeCapability {
	slices.Sort(cs)
	return slices.Compact(cs)
}

func capsKey(cs []tailcfg.NodeCapability) string {
	parts := make([]string, len(cs))
	for k, cp := range cs {
		parts[k] = string(cp)
	}
	return strings.Join(parts, "\x00")
}

// capsFor computes slot i's capabilities from scratch.
func (c *Compiled) capsFor(i int) []tailcfg.NodeCapability {
	lineage := c.lineage
	if !c.world.slot(i).live {
		return nil
	}
	var cs []tailcfg.NodeCapability
	if lineage.randomizePort {
		cs = append(cs, tailcfg.NodeAttrRandomizeClientPort)
	}
	for _, ar := range lineage.attrs {
		for _, t := range ar.targets {
			if c.aliasNodes[t].has(i) {
				cs = append(cs, ar.attrs...)
				break
			}
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return normCaps(cs)
}

// NodeCapabilities returns the capabilities nodeAttrs (and
// randomizeClientPort) give node nodeID, sorted; nil if none. The slice
// is shared: do not modify it.
func (c *Compiled) NodeCapabilities(nodeID ids.NodeID) []tailcfg.NodeCapability {
	i, ok := c.world.slotOf(nodeID)
	if !ok || !c.lineage.hasCaps {
		return nil
	}
	return c.nodes.at(i).caps
}

// NodeCapMap returns NodeCapabilities as the map a MapResponse carries
// (each capability without arguments, as Tailscale sends them); nil if
// none.
func (c *Compiled) NodeCapMap(nodeID ids.NodeID) tailcfg.NodeCapMap {
	cs := c.NodeCapabilities(nodeID)
	if len(cs) == 0 {
		return nil
	}
	m := make(tailcfg.NodeCapMap, len(cs))
	for _, cp := range cs {
		m[cp] = nil
	}
	return m
}

func (b *builder) compileApprovers() {
	c, r, lineage := b.c, b.r, b.c.lineage
	n := c.world.numSlots
	ownerNodes := func(owners []alias) (bitset, []int32) {
		bs := newBitset(n)
		var idx []int32
		for _, o := range owners {
			res := r.resolve(o)
			idx = append(idx, res.listPos)
			bs.or(res.nodes)
		}
		return bs, idx
	}
	c.exitApprovers, lineage.exitApproverAliases = ownerNodes(c.pol.exitNode)
	for _, ra := range c.pol.routes {
		bs, idx := ownerNodes(ra.owners)
		c.routeApprovers = append(c.routeApprovers, bs)
		lineage.routeApproverAliases = append(lineage.routeApproverAliases, idx)
	}
}

// AutoApproveRoute reports whether autoApprovers.routes approve prefix
// for node n: an entry whose prefix contains it (sub-prefixes are
// approved) lists n's user, a group with n's user, or one of n's tags.
// A tagged node is matched by its tags only.
func (p *Policy) AutoApproveRoute(prefix netip.Prefix, n Node, users []User) bool {
	if p == nil {
		return false
	}
	prefix = prefix.Masked()
	for _, ra := range p.routes {
		if ra.prefix.Bits() <= prefix.Bits() && ra.prefix.Contains(prefix.Addr()) && p.ownersMatchNode(ra.owners, n, users) {
			return true
		}
	}
	return false
}

// AutoApproveExitNode reports whether autoApprovers.exitNode lets node n
// have its exit routes approved automatically.
func (p *Policy) AutoApproveExitNode(n Node, users []User) bool {
	return p != nil && p.ownersMatchNode(p.exitNode, n, users)
}

func (p *Policy) ownersMatchNode(owners []alias, n Node, users []User) bool {
	for _, o := range owners {
		switch o.kind {
		case kindTag:
			if slices.Contains(n.Tags, o.text) {
				return true
			}
		case kindUser, kindGroup, kindIdPGroup:
			if n.tagged() {
				continue
			}
			for _, u := range users {
				if u.ID == n.UserID && p.userIsOwner(o, u, users) {
					return true
				}
			}
		}
	}
	return false
}

// userIsOwner reports whether user alias or group o names u. With users
// given, a token matching several users names none of them.
func (p *Policy) userIsOwner(o alias, u User, users []User) bool {
	match := func(tok string) bool {
		t := strings.TrimSuffix(tok, "@")
		if u.Email != t && u.Name != t {
			return false
		}
		hits := 0
		for _, v := range users {
			if v.Email == t || v.Name == t {
				hits++
			}
		}
		return hits <= 1
	}
	switch o.kind {
	case kindUser:
		return match(o.text)
	case kindIdPGroup:
		return u.inIdPGroup(o.idpGroup())
	case kindGroup:
		for _, m := range p.groups[o.text] {
			if m.kind == kindIdPGroup {
				if u.inIdPGroup(m.idpGroup()) {
					return true
				}
				continue
			}
			if match(m.text) {
				return true
			}
		}
	}
	return false
}

// TagOwnerAllowed reports whether user u, or a credential or node holding
// ownedTags, may apply tag: the tag must be in tagOwners, and u must be
// (a member of a group that is) an owner, or one of ownedTags must be the
// tag itself or own it, directly or through other tags (tag-owns-tag).
// Owners of a tag that owns tag also own tag. Tags missing from tagOwners
// are never allowed.
func (p *Policy) TagOwnerAllowed(tag string, u User, ownedTags []string) bool {
	if p == nil {
		return false
	}
	if _, ok := p.tagOwners[tag]; !ok {
		return false
	}
	if slices.Contains(ownedTags, tag) {
		return true
	}
	seen := map[string]bool{}
	var walk func(t string) bool
	walk = func(t string) bool {
		if seen[t] {
			return false
		}
		seen[t] = true
		for _, o := range p.tagOwners[t] {
			switch o.kind {
			case kindTag:
				if slices.Contains(ownedTags, o.text) || walk(o.text) {
					return true
				}
			case kindUser, kindGroup, kindIdPGroup:
				if u.ID != 0 || u.Name != "" || u.Email != "" {
					if p.userIsOwner(o, u, nil) {
						return true
					}
				}
			}
		}
		return false
	}
	return walk(tag)
}
