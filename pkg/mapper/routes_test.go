package mapper

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"tailscale.com/tailcfg"
)

// TestPeerNodeRoutes: a peer's AllowedIPs carry its addresses, the subnet
// routes it is primary for and its served exit routes; PrimaryRoutes only
// the subnet routes. Advertised but unapproved routes stay out.
func TestPeerNodeRoutes(t *testing.T) {
	m := New(Options{BaseDomain: "ts.test"})
	n := testNode(3)
	n.Hostinfo = &tailcfg.Hostinfo{RoutableIPs: []netip.Prefix{
		netip.MustParsePrefix("10.33.0.0/24"), netip.MustParsePrefix("10.44.0.0/24"),
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"),
	}}
	n.ApprovedRoutes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.33.0.0/24"), netip.MustParsePrefix("::/0")}
	n.PrimaryRoutes = []netip.Prefix{netip.MustParsePrefix("10.33.0.0/24")}

	for name, tn := range map[string]*tailcfg.Node{"peer": m.PeerNode(n, time.Now()), "self": m.SelfNode(n, time.Now(), nil)} {
		want := []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32"), netip.MustParsePrefix("10.33.0.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		if !slices.Equal(tn.AllowedIPs, want) {
			t.Errorf("%s AllowedIPs = %v, want %v", name, tn.AllowedIPs, want)
		}
		if !slices.Equal(tn.PrimaryRoutes, n.PrimaryRoutes) {
			t.Errorf("%s PrimaryRoutes = %v, want %v", name, tn.PrimaryRoutes, n.PrimaryRoutes)
		}
	}

	// Not primary and not an exit node: addresses only.
	n.PrimaryRoutes = nil
	n.ApprovedRoutes = nil
	if tn := m.PeerNode(n, time.Now()); len(tn.AllowedIPs) != 1 || tn.PrimaryRoutes != nil {
		t.Errorf("plain node: AllowedIPs %v, PrimaryRoutes %v", tn.AllowedIPs, tn.PrimaryRoutes)
	}
}
