package state

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
)

func userFromStore(u store.User) *User {
	return &User{ID: u.ID, Name: u.Name, DisplayName: u.DisplayName, Email: u.Email, ProfilePicURL: u.ProfilePicURL,
		Provider: u.Provider, ProviderID: u.ProviderID, Groups: u.Groups, CreatedAt: u.CreatedAt}
}

func nodeFromStore(sn store.Node) (*Node, error) {
	n := &Node{
		ID:             sn.ID,
		Hostname:       sn.Hostname,
		GivenName:      sn.GivenName,
		Tags:           sn.Tags,
		Ephemeral:      sn.Ephemeral,
		RegisterMethod: sn.RegisterMethod,
		CreatedAt:      sn.CreatedAt,
		LastSeen:       sn.LastSeen,
		Expiry:         sn.Expiry,

		PendingApproval: sn.PendingApproval,
		Version:         sn.Version,
	}
	if sn.UserID != nil {
		n.UserID = *sn.UserID
	}
	if sn.AuthKeyID != nil {
		n.AuthKeyID = *sn.AuthKeyID
	}
	if err := n.MachineKey.UnmarshalText([]byte(sn.MachineKey)); err != nil {
		return nil, fmt.Errorf("machine key: %w", err)
	}
	if err := n.NodeKey.UnmarshalText([]byte(sn.NodeKey)); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if sn.DiscoKey != "" {
		if err := n.DiscoKey.UnmarshalText([]byte(sn.DiscoKey)); err != nil {
			return nil, fmt.Errorf("disco key: %w", err)
		}
	}
	for _, e := range sn.Endpoints {
		if ap, err := netip.ParseAddrPort(e); err == nil {
			n.Endpoints = append(n.Endpoints, ap)
		}
	}
	if len(sn.Hostinfo) > 0 {
		var hi tailcfg.Hostinfo
		if err := json.Unmarshal(sn.Hostinfo, &hi); err == nil {
			n.Hostinfo = &hi
			if hi.NetInfo != nil {
				n.HomeDERP = hi.NetInfo.PreferredDERP
			}
		}
	}
	n.IPv4, _ = netip.ParseAddr(sn.IPv4)
	n.IPv6, _ = netip.ParseAddr(sn.IPv6)
	for _, r := range sn.ApprovedRoutes {
		if p, err := netip.ParsePrefix(r); err == nil {
			n.ApprovedRoutes = append(n.ApprovedRoutes, p)
		}
	}
	return n, nil
}

func nodeToStore(n *Node) store.Node {
	sn := store.Node{
		ID:             n.ID,
		MachineKey:     n.MachineKey.String(),
		NodeKey:        n.NodeKey.String(),
		Hostname:       n.Hostname,
		GivenName:      n.GivenName,
		Tags:           n.Tags,
		Ephemeral:      n.Ephemeral,
		RegisterMethod: n.RegisterMethod,
		CreatedAt:      n.CreatedAt,
		LastSeen:       n.LastSeen,
		Expiry:         n.Expiry,

		PendingApproval: n.PendingApproval,
		Version:         n.Version,
	}
	if !n.DiscoKey.IsZero() {
		sn.DiscoKey = n.DiscoKey.String()
	}
	if n.UserID != 0 {
		id := n.UserID
		sn.UserID = &id
	}
	if n.AuthKeyID != 0 {
		id := n.AuthKeyID
		sn.AuthKeyID = &id
	}
	for _, e := range n.Endpoints {
		sn.Endpoints = append(sn.Endpoints, e.String())
	}
	if n.Hostinfo != nil {
		sn.Hostinfo, _ = json.Marshal(n.Hostinfo)
	}
	if n.IPv4.IsValid() {
		sn.IPv4 = n.IPv4.String()
	}
	if n.IPv6.IsValid() {
		sn.IPv6 = n.IPv6.String()
	}
	for _, r := range n.ApprovedRoutes {
		sn.ApprovedRoutes = append(sn.ApprovedRoutes, r.String())
	}
	return sn
}

// LiveFactToStore is f in the store's text forms, for the change log.
func LiveFactToStore(f LiveFact) store.LiveRecord {
	r := store.LiveRecord{Node: f.Node, Online: f.Online, At: f.At, ReportedAt: f.ReportedAt, Cap: int(f.Report.Version)}
	if !f.Report.DiscoKey.IsZero() {
		r.DiscoKey = f.Report.DiscoKey.String()
	}
	for _, e := range f.Report.Endpoints {
		r.Endpoints = append(r.Endpoints, e.String())
	}
	if hi := f.Report.Hostinfo; hi != nil {
		r.Hostinfo, _ = json.Marshal(hi)
		r.Hostname = hi.Hostname
	}
	return r
}

// LiveFactFromStore reads a fact another server stored.
func LiveFactFromStore(r store.LiveRecord) (LiveFact, error) {
	f := LiveFact{Node: r.Node, Online: r.Online, At: r.At, ReportedAt: r.ReportedAt, Report: MapUpdate{Version: tailcfg.CapabilityVersion(r.Cap)}}
	if r.DiscoKey != "" {
		if err := f.Report.DiscoKey.UnmarshalText([]byte(r.DiscoKey)); err != nil {
			return LiveFact{}, fmt.Errorf("node %d disco key: %w", r.Node, err)
		}
	}
	for _, e := range r.Endpoints {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			return LiveFact{}, fmt.Errorf("node %d endpoint: %w", r.Node, err)
		}
		f.Report.Endpoints = append(f.Report.Endpoints, ap)
	}
	if f.Report.Endpoints == nil {
		f.Report.Endpoints = []netip.AddrPort{} // none: not "unchanged"
	}
	if len(r.Hostinfo) > 0 {
		var hi tailcfg.Hostinfo
		if err := json.Unmarshal(r.Hostinfo, &hi); err != nil {
			return LiveFact{}, fmt.Errorf("node %d host info: %w", r.Node, err)
		}
		f.Report.Hostinfo = &hi
	}
	return f, nil
}
