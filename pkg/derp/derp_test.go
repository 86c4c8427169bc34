package derp

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestUnreachableURLNeverBlocksStart: a DERP map URL that cannot be fetched
// leaves start-up instant, the embedded region in force, and is retried.
func TestUnreachableURLNeverBlocksStart(t *testing.T) {
	// A loopback port with nothing listening: connection refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String() + "/derpmap"
	ln.Close()
	// And one that accepts but never answers.
	hang, _ := net.Listen("tcp", "127.0.0.1:0")
	defer hang.Close()

	start := time.Now()
	s, err := New(Options{
		Enabled: true, PrivateKey: key.NewNode(), RegionID: 999, RegionCode: "hs", RegionName: "embedded",
		ServerURL: "http://127.0.0.1:8080", STUNListenAddr: "127.0.0.1:0", AddEmbeddedRegion: true,
		URLs:       []string{dead, "http://" + hang.Addr().String() + "/derpmap"},
		HTTPClient: &http.Client{Timeout: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go s.Run(ctx)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("start-up took %v", d)
	}
	m := s.Map()
	r := m.Regions[999]
	if r == nil || r.Nodes[0].HostName != "127.0.0.1" || r.Nodes[0].DERPPort != 8080 || r.Nodes[0].STUNPort <= 0 {
		t.Fatalf("embedded region missing or wrong: %+v", r)
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "derp.yaml")
	os.WriteFile(good, []byte(`
regions:
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - name: 900a
        regionid: 900
        hostname: derp.example.com
        ipv4: 192.0.2.1
        stunport: 0
        derpport: 0
`), 0o600)
	m, err := LoadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Regions[900]; r == nil || r.RegionCode != "custom" || r.Nodes[0].HostName != "derp.example.com" {
		t.Fatalf("parsed %+v", m.Regions[900])
	}
	for name, body := range map[string]string{
		"empty":    "regions: {}\n",
		"mismatch": "regions:\n  1:\n    regionid: 2\n    nodes: [{name: a}]\n",
		"syntax":   "regions: [\n",
		"nullnode": "regions:\n  1:\n    regionid: 1\n    nodes: [null]\n",
	} {
		p := filepath.Join(dir, name+".yaml")
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := LoadFile(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestVerifyClients: with verify_clients, the relay's admission check
// admits known node keys only.
func TestVerifyClients(t *testing.T) {
	known := key.NewNode().Public()
	s, err := New(Options{
		Enabled: true, PrivateKey: key.NewNode(), RegionID: 999, ServerURL: "http://127.0.0.1:8080",
		AddEmbeddedRegion: true, VerifyClients: true,
		IsKnownNode: func(k key.NodePublic) bool { return k == known },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ask := func(k key.NodePublic) bool {
		body, _ := json.Marshal(tailcfg.DERPAdmitClientRequest{NodePublic: k})
		resp, err := http.Post("http://"+s.verifyLn.Addr().String()+"/verify", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out tailcfg.DERPAdmitClientResponse
		json.NewDecoder(resp.Body).Decode(&out)
		return out.Allow
	}
	if !ask(known) {
		t.Error("known node refused")
	}
	if ask(key.NewNode().Public()) {
		t.Error("unknown node admitted")
	}
}

// TestFetchRejectsNullEntries: a DERP map from a URL with a null region or
// node, or a region under the wrong key, is refused like a bad file (the
// previous map stays), instead of reaching every client.
func TestFetchRejectsNullEntries(t *testing.T) {
	for name, body := range map[string]string{
		"null region": `{"Regions": {"1": null}}`,
		"null node":   `{"Regions": {"1": {"RegionID": 1, "Nodes": [null]}}}`,
		"wrong key":   `{"Regions": {"1": {"RegionID": 2, "Nodes": [{"Name": "a", "RegionID": 2}]}}}`,
		"good":        `{"Regions": {"1": {"RegionID": 1, "Nodes": [{"Name": "a", "RegionID": 1}]}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(body)) }))
			defer srv.Close()
			s, err := New(Options{URLs: []string{srv.URL}, HTTPClient: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.fetch(context.Background(), srv.URL)
			if (err == nil) != (name == "good") {
				t.Fatalf("fetch: %v", err)
			}
		})
	}
}

// TestEmbeddedRegionFamilyOff: derp.server.ipv4/ipv6 "none" reaches the
// embedded region's node as it is (tailcfg's way to switch an address
// family off), also when server_url's host is an address of that family.
func TestEmbeddedRegionFamilyOff(t *testing.T) {
	s, err := New(Options{
		Enabled: true, PrivateKey: key.NewNode(), RegionID: 999, RegionCode: "hs", RegionName: "embedded",
		ServerURL: "http://127.0.0.1:8080", AddEmbeddedRegion: true, IPv4: "none", IPv6: "none",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := s.Map().Regions[999]
	if r == nil || r.Nodes[0].IPv4 != "none" || r.Nodes[0].IPv6 != "none" {
		t.Fatalf("embedded region %+v, want its node's IPv4 and IPv6 \"none\"", r)
	}
}
