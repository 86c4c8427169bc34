package mapper

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/util/zstdframe"
)

// benchWorld is n nodes shaped like busy tailscaled nodes: keys, two
// addresses, two endpoints, a home DERP and a small Hostinfo.
func benchWorld(n int) ([]*state.Node, map[ids.UserID]*state.User) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "load"}}
	nodes := make([]*state.Node, 0, n)
	for i := 1; i <= n; i++ {
		nodes = append(nodes, &state.Node{
			ID: ids.NodeID(i), NodeKey: key.NewNode().Public(), MachineKey: key.NewMachine().Public(),
			DiscoKey: key.NewDisco().Public(), GivenName: fmt.Sprintf("load-%d", i), Hostname: fmt.Sprintf("load-%d", i),
			UserID: 1, HomeDERP: 999, Online: true, CreatedAt: time.Unix(1_790_000_000, int64(i)),
			IPv4:      netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
			IPv6:      netip.AddrFrom16([16]byte{0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 14: byte(i >> 8), 15: byte(i)}),
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 41641), netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 41641)},
			Hostinfo:  &tailcfg.Hostinfo{Hostname: fmt.Sprintf("load-%d", i), OS: "linux", OSVersion: "6.1", IPNVersion: "1.102.5"},
		})
	}
	return nodes, users
}

// benchHub attaches a session for each node, all under allow-all.
func benchHub(b *testing.B, nodes []*state.Node, users map[ids.UserID]*state.User) (*Hub, []*Session) {
	hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{QueueSize: 4})
	b.Cleanup(hub.Close)
	sess := make([]*Session, 0, len(nodes))
	for _, n := range nodes {
		s := hub.NewSession(n.ID, true, false)
		s.Attach(state.Snapshot{Self: n, Users: users})
		sess = append(sess, s)
	}
	syncHub(hub)
	return hub, sess
}

func drainAll(sess []*Session) {
	for _, s := range sess {
		for len(s.queue) > 0 {
			f := <-s.queue
			f.bytes(true)
			s.took(1)
		}
	}
}

// BenchmarkRound measures one delivery round to 10,000 sessions under
// allow-all: the changes are coalesced, encoded and compressed once, and
// the shared frame is queued on every session (writing to the network is
// not included). "one" is a single endpoint patch; "hundred" is 100
// changes (as churn at 100/s with one round per second brings), including
// ten whole-node updates.
func BenchmarkRound(b *testing.B) {
	nodes, users := benchWorld(10000)
	for _, tc := range []struct {
		name    string
		changes int
	}{{"one", 1}, {"hundred", 100}} {
		b.Run(tc.name, func(b *testing.B) {
			hub, sess := benchHub(b, nodes, users)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for c := 0; c < tc.changes; c++ {
					n := nodes[(i*131+c*7919)%len(nodes)]
					if c%10 == 9 {
						hub.Apply(state.Change{Kind: state.NodeUpdated, Node: n, At: time.Now()})
						continue
					}
					ep := []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(c)}), uint16(1000+i%60000))}
					hub.Apply(state.Change{Kind: state.NodePatched, Node: n, At: time.Now(), Patch: &tailcfg.PeerChange{NodeID: tailcfg.NodeID(n.ID), Endpoints: ep}})
				}
				syncHub(hub)
				b.StopTimer()
				drainAll(sess)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(sess)), "ns/session")
		})
	}
}

// BenchmarkFullMap measures building a compressed full map of 9,999
// peers: "shared" from the compressed peer runs other sessions already
// built (the common case), "cold" with every run compressed anew, and
// "whole" the JSON map compressed as one piece (a per-session
// compression, for comparison). It reports the compressed size.
func BenchmarkFullMap(b *testing.B) {
	nodes, users := benchWorld(10000)
	snap := func(self int) state.Snapshot {
		peers := make([]*state.Node, 0, len(nodes)-1)
		for i, n := range nodes {
			if i != self {
				peers = append(peers, n)
			}
		}
		return state.Snapshot{Self: nodes[self], Peers: peers, Users: users}
	}
	b.Run("shared", func(b *testing.B) {
		hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{})
		defer hub.Close()
		hub.FullMapZstd(snap(0)) // warm the runs
		var size int
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			size = len(hub.FullMapZstd(snap(1 + i%9000)))
		}
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("cold", func(b *testing.B) {
		var size int
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{})
			for _, n := range nodes {
				hub.peerJSON(n, time.Now()) // peer encodings exist already in a running server
			}
			b.StartTimer()
			size = len(hub.FullMapZstd(snap(0)))
			b.StopTimer()
			hub.Close()
		}
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("whole", func(b *testing.B) {
		hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{})
		defer hub.Close()
		hub.FullMapJSON(snap(0))
		var size int
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			size = len(zstdframe.AppendEncode(nil, hub.FullMapJSON(snap(1+i%9000)), zstdframe.FastestCompression))
		}
		b.ReportMetric(float64(size), "bytes")
	})
}

// BenchmarkPeerEncode measures encoding one node's peer view, done once
// per node change and shared by every session.
func BenchmarkPeerEncode(b *testing.B) {
	nodes, _ := benchWorld(1)
	hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{})
	defer hub.Close()
	now := time.Now()
	var size int
	for i := 0; i < b.N; i++ {
		n := *nodes[0]
		size = len(hub.peerJSON(&n, now))
	}
	b.ReportMetric(float64(size), "bytes")
}
