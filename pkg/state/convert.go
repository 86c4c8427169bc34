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
