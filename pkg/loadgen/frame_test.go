package loadgen

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

func TestEndpointCodec(t *testing.T) {
	c := newEPCodec()
	other := newEPCodec()
	for _, idx := range []int32{0, 1, 9, 255, 4095, 65535, 65536, 65537, 1 << 20, 1<<31 - 1} {
		for _, seq := range []int32{0, 1, 42, maxSeq} {
			ep := c.endpoint(idx, seq)
			text, _ := ep.MarshalText()
			gotIdx, gotSeq, ok := c.decode(text)
			if !ok || gotIdx != idx || gotSeq != seq {
				t.Errorf("decode(%s) = %d, %d, %v; want %d, %d", text, gotIdx, gotSeq, ok, idx, seq)
			}
			// Any textual form of the address must decode the same: here
			// uncompressed, zero-padded, upper case.
			a := ep.Addr().As16()
			long := "["
			for g := range 8 {
				long += fmt.Sprintf("%04X:", uint16(a[2*g])<<8|uint16(a[2*g+1]))
			}
			long = fmt.Sprintf("%s]:%d", long[:len(long)-1], ep.Port())
			if gotIdx, gotSeq, ok := c.decode([]byte(long)); !ok || gotIdx != idx || gotSeq != seq {
				t.Errorf("decode(%s) = %d, %d, %v; want %d, %d", long, gotIdx, gotSeq, ok, idx, seq)
			}
			if _, _, ok := other.decode(text); ok {
				t.Errorf("another run's codec accepted %s", text)
			}
		}
	}
	for _, foreign := range []string{
		"127.0.0.1:10001", "192.168.1.2:41641", "[::1]:10001", "[fd7a:115c:a1e0::1]:41641", "",
		"[" + c.addr(5).String() + "]:9999", // below the first port
		"[" + c.addr(5).String() + "]",
		"[" + c.addr(5).String() + "]:",
		"[" + c.addr(5).String() + "]:123456",
		"[" + c.addr(5).String() + "]:1x001",
		"[" + c.addr(5).String() + ":10001",
	} {
		if idx, seq, ok := c.decode([]byte(foreign)); ok {
			t.Errorf("decode(%q) = %d, %d, want not ours", foreign, idx, seq)
		}
	}
}

// sample is a map response with everything a server sends, including
// strings that need escaping, in Go's field order.
func sample(c *epCodec) *tailcfg.MapResponse {
	ep := func(idx, seq int32) netip.AddrPort { return c.endpoint(idx, seq) }
	hi := (&tailcfg.Hostinfo{Hostname: `we"ird\ host ]}{[`, OS: "linux", Services: []tailcfg.Service{{Proto: "tcp", Port: 22, Description: `"\\"`}}}).View()
	peer := func(id int64, eps ...netip.AddrPort) *tailcfg.Node {
		return &tailcfg.Node{
			ID: tailcfg.NodeID(id), StableID: "s", Name: "n.example.com.", Key: key.NewNode().Public(),
			Endpoints: eps, Hostinfo: hi, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")},
			CapMap: tailcfg.NodeCapMap{"https://x/{}": nil},
		}
	}
	return &tailcfg.MapResponse{
		KeepAlive: false,
		Node:      peer(7, ep(7, 3)),
		DERPMap:   &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{1: {RegionID: 1, RegionCode: "x", Nodes: []*tailcfg.DERPNode{{Name: "1a", HostName: "h"}}}}},
		Peers: []*tailcfg.Node{
			peer(1, netip.MustParseAddrPort("192.168.0.1:41641"), ep(1, 0)),
			peer(2), // no endpoints yet
			peer(3, netip.MustParseAddrPort("[::1]:5")),
			peer(4, ep(4, 17), ep(4, 2)), // the first of ours counts
		},
		PeersChanged:      []*tailcfg.Node{peer(5, ep(5, 1))},
		PeersRemoved:      []tailcfg.NodeID{8, 9},
		PeersChangedPatch: []*tailcfg.PeerChange{{NodeID: 10, DERPRegion: 3}, {NodeID: 11, Endpoints: []netip.AddrPort{ep(11, 99)}}},
		PacketFilter:      []tailcfg.FilterRule{{SrcIPs: []string{"*"}}},
		UserProfiles:      []tailcfg.UserProfile{{ID: 1, LoginName: `a\"b`, DisplayName: "ünï"}},
		Domain:            "example.com",
	}
}

func checkSample(t *testing.T, f *frameInfo) {
	t.Helper()
	want := frameInfo{
		selfID:  7,
		full:    true,
		peers:   []peerRef{{1, 1, 0, 0}, {2, -1, 0, 0}, {3, -1, 0, 0}, {4, 4, 17, 0}},
		changed: []peerRef{{5, 5, 1, 0}},
		removed: []int64{8, 9},
		patched: []peerRef{{11, 11, 99, 0}},
	}
	if f.keepAlive || f.selfID != want.selfID || f.full != want.full || !slices.Equal(f.peers, want.peers) ||
		!slices.Equal(f.changed, want.changed) || !slices.Equal(f.removed, want.removed) || !slices.Equal(f.patched, want.patched) {
		t.Errorf("parsed %+v\nwant   %+v", *f, want)
	}
}

func TestParseFrame(t *testing.T) {
	c := newEPCodec()
	b, err := json.Marshal(sample(c))
	if err != nil {
		t.Fatal(err)
	}
	var f frameInfo
	if err := parseFrame(b, c, &f); err != nil {
		t.Fatal(err)
	}
	checkSample(t, &f)

	// Indented, and with Peers last as this repository's server splices
	// full maps: order and white space do not matter.
	resp := sample(c)
	peers := resp.Peers
	resp.Peers = nil
	head, _ := json.MarshalIndent(resp, "", "  ")
	pj, _ := json.MarshalIndent(peers, "  ", "\t")
	spliced := string(head[:len(head)-2]) + ",\n \"Peers\" : " + string(pj) + "\n}\n"
	f = frameInfo{}
	if err := parseFrame([]byte(spliced), c, &f); err != nil {
		t.Fatal(err)
	}
	checkSample(t, &f)

	// The slices are reused: a keep-alive after it says nothing else.
	if err := parseFrame([]byte(`{"KeepAlive":true}`), c, &f); err != nil {
		t.Fatal(err)
	}
	if !f.keepAlive || f.full || f.selfID != 0 || len(f.peers)+len(f.changed)+len(f.removed)+len(f.patched) != 0 {
		t.Errorf("keep-alive parsed as %+v", f)
	}

	for in, full := range map[string]bool{`{"Peers":[]}`: true, `{"Peers":null}`: false, `{}`: false, ` { "Node" : null , "Peers" : [ ] } `: true} {
		if err := parseFrame([]byte(in), c, &f); err != nil || f.full != full {
			t.Errorf("%s: full=%v err=%v, want full=%v", in, f.full, err, full)
		}
	}
}

func TestParseFrameErrors(t *testing.T) {
	c := newEPCodec()
	good, _ := json.Marshal(sample(c))
	for _, in := range []string{
		``, `[]`, `{`, `{"Peers":[`, `{"Peers":[{"ID":1,}]}`, `{"Peers":{}}`, `{"PeersRemoved":["x"]}`,
		`{"Node":{"ID":"1"}}`, `{"KeepAlive":1}`, `{"a":"unterminated}`, `{"a":1}x`, `{"a" 1}`, `{"a":}`,
		`{"PeersChangedPatch":[{"NodeID":1,"Endpoints":[1]}]}`,
	} {
		var f frameInfo
		if err := parseFrame([]byte(in), c, &f); err == nil {
			t.Errorf("parseFrame(%q) accepted malformed input", in)
		}
	}
	// Every truncation of a real frame is an error, never a panic.
	for i := range len(good) - 1 {
		var f frameInfo
		if err := parseFrame(good[:i], c, &f); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
}

// FuzzParseFrame checks that whatever a server sends, once it is a valid
// MapResponse in Go's encoding, decodes to the same IDs tailcfg sees.
func FuzzParseFrame(f *testing.F) {
	c := newEPCodec()
	good, _ := json.Marshal(sample(c))
	f.Add(good)
	f.Add([]byte(`{"KeepAlive":true}`))
	f.Add([]byte(`{"PeersChangedPatch":[{"NodeID":3,"Endpoints":["1.2.3.4:5"]}],"PeersRemoved":[1,2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fi frameInfo
		parseFrame(b, c, &fi) // must not panic
		var resp tailcfg.MapResponse
		if json.Unmarshal(b, &resp) != nil {
			return
		}
		canon, err := json.Marshal(&resp)
		if err != nil {
			return
		}
		if err := parseFrame(canon, c, &fi); err != nil {
			t.Fatalf("valid response rejected: %v\n%s", err, canon)
		}
		var ids []int64
		for _, p := range resp.Peers {
			ids = append(ids, int64(p.ID))
		}
		var got []int64
		for _, p := range fi.peers {
			got = append(got, p.id)
		}
		if !slices.Equal(ids, got) || fi.full != (len(resp.Peers) > 0) || len(fi.removed) != len(resp.PeersRemoved) {
			t.Fatalf("peers %v, want %v (full %v)\n%s", got, ids, fi.full, canon)
		}
	})
}

func BenchmarkParseFullMap(b *testing.B) {
	c := newEPCodec()
	resp := sample(c)
	resp.Peers = nil
	for i := range 1000 {
		p := *sample(c).Peers[0]
		p.ID = tailcfg.NodeID(i + 100)
		p.Endpoints = []netip.AddrPort{c.endpoint(int32(i), 5)}
		resp.Peers = append(resp.Peers, &p)
	}
	js, _ := json.Marshal(resp)
	b.SetBytes(int64(len(js)))
	b.ReportAllocs()
	var f frameInfo
	for b.Loop() {
		if err := parseFrame(js, c, &f); err != nil || len(f.peers) != 1000 {
			b.Fatal(err)
		}
	}
}
