package mapper

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// TestCertDomains: with CertDomains on, each node's full map, a DNS
// broadcast and a delta renaming it carry its own MagicDNS name as its
// only certificate domain (never another node's); with it off none does.
func TestCertDomains(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	dns := &tailcfg.DNSConfig{Domains: []string{"ts.test"}}
	for _, on := range []bool{true, false} {
		m := New(Options{BaseDomain: "ts.test", CertDomains: on, DNS: func() *tailcfg.DNSConfig { return dns }})
		want := func(name string) []string {
			if !on {
				return nil
			}
			return []string{name + ".ts.test"}
		}
		hub := NewHub(m, HubOptions{})
		n1, n2 := testNode(1), testNode(2)
		s1 := hub.NewSession(1, false, false)
		s1.Attach(state.Snapshot{Self: n1, Peers: []*state.Node{n2}, Users: users})
		s2 := hub.NewSession(2, false, false)
		s2.Attach(state.Snapshot{Self: n2, Peers: []*state.Node{n1}, Users: users})

		full := m.fullResponse(state.Snapshot{Self: n1, Peers: []*state.Node{n2}, Users: users}, time.Now())
		if got := full.DNSConfig.CertDomains; !slices.Equal(got, want("n1")) {
			t.Errorf("on=%v: full map's CertDomains = %v, want %v", on, got, want("n1"))
		}
		if dns.CertDomains != nil {
			t.Fatalf("the shared DNS configuration was changed: %v", dns.CertDomains)
		}

		next := func(s *Session) tailcfg.MapResponse {
			t.Helper()
			syncHub(hub)
			select {
			case f := <-s.queue:
				var r tailcfg.MapResponse
				if err := json.Unmarshal(f.json, &r); err != nil {
					t.Fatal(err)
				}
				return r
			default:
				t.Fatalf("node %d: no frame", s.NodeID)
				return tailcfg.MapResponse{}
			}
		}
		hub.Broadcast(&tailcfg.MapResponse{DNSConfig: dns})
		for s, name := range map[*Session]string{s1: "n1", s2: "n2"} {
			if got := next(s).DNSConfig; got == nil || !slices.Equal(got.CertDomains, want(name)) {
				t.Errorf("on=%v: broadcast to %s: DNS %+v, want CertDomains %v", on, name, got, want(name))
			}
		}

		renamed := *n1
		renamed.GivenName = "web"
		hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &renamed, Self: true, At: time.Now()})
		self := next(s1)
		next(s2)
		if on && (self.DNSConfig == nil || !slices.Equal(self.DNSConfig.CertDomains, want("web"))) {
			t.Errorf("renamed: DNS %+v, want CertDomains %v", self.DNSConfig, want("web"))
		}
		if !on && self.DNSConfig != nil {
			t.Errorf("off: a self change carried DNS %+v", self.DNSConfig)
		}
		hub.Broadcast(&tailcfg.MapResponse{DNSConfig: dns})
		if got := next(s1).DNSConfig; got == nil || !slices.Equal(got.CertDomains, want("web")) {
			t.Errorf("on=%v: broadcast after rename: %+v, want %v", on, got, want("web"))
		}
		hub.Close()
	}
}
