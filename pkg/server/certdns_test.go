package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/knottest"
	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// setDNS posts a SetDNSRequest over the node's own Noise connection, as
// tailscaled does for `tailscale cert`, and returns the status and body.
func setDNS(t *testing.T, ctx context.Context, sess *tsp.MapSession, nk key.NodePublic, name, typ, value string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(tailcfg.SetDNSRequest{Version: tailcfg.CurrentCapabilityVersion, NodeKey: nk, Name: name, Type: typ, Value: value})
	req, _ := http.NewRequestWithContext(ctx, "POST", "https://unused/machine/set-dns", bytes.NewReader(body))
	res, err := sess.NoiseRoundTrip(req)
	if err != nil {
		t.Fatalf("set-dns: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, strings.TrimSpace(string(b))
}

// TestSetDNSWithKnot: with dns.certificates pointing at a real Knot
// server, each node is offered a certificate for its own MagicDNS name
// only, and /machine/set-dns sets that name's challenge record in the zone
// and nothing else: another node's record, another type, a node key of
// another machine are refused, and the records are taken back when the
// server stops. Without dns.certificates nodes are offered nothing, and
// with an unreachable DNS server set-dns fails with the reason.
func TestSetDNSWithKnot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts knotd")
	}
	knot := knottest.Start(t, "tailnet.test", knottest.Options{})
	conf := func(server string) string {
		return fmt.Sprintf("dns:\n  base_domain: tailnet.test\n  certificates:\n    provider: rfc2136\n    rfc2136:\n      server: %s\n      tsig_key_name: %s\n      tsig_secret: %s\n",
			server, knot.KeyName, knot.Secret)
	}
	ts := startServerWith(t, "", conf(knot.Addr), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := ts.key(t, true, time.Now().Add(time.Hour))
	cLaptop, cServer := newClient(t, ts.URL), newClient(t, ts.URL)
	nkLaptop, _ := register(t, cLaptop, k, "laptop")
	nkServer, _ := register(t, cServer, k, "server")
	sLaptop, full := openMap(t, ctx, cLaptop, nkLaptop, "laptop")
	openMap(t, ctx, cServer, nkServer, "server")
	if full.DNSConfig == nil || !slices.Equal(full.DNSConfig.CertDomains, []string{"laptop.tailnet.test"}) {
		t.Fatalf("laptop's full map: DNS %+v, want CertDomains [laptop.tailnet.test]", full.DNSConfig)
	}

	own := "_acme-challenge.laptop.tailnet.test"
	for _, tc := range []struct {
		name, record, typ string
		nk                key.NodePublic
		code              int
	}{
		{"another node's record", "_acme-challenge.server.tailnet.test", "TXT", nkLaptop.Public(), http.StatusForbidden},
		{"not a challenge", "laptop.tailnet.test", "TXT", nkLaptop.Public(), http.StatusForbidden},
		{"another type", own, "A", nkLaptop.Public(), http.StatusBadRequest},
		{"another machine's node key", "_acme-challenge.server.tailnet.test", "TXT", nkServer.Public(), http.StatusUnauthorized},
	} {
		code, body := setDNS(t, ctx, sLaptop, tc.nk, tc.record, tc.typ, "refused-token")
		if code != tc.code {
			t.Errorf("%s: %d %q, want %d", tc.name, code, body, tc.code)
		}
	}
	if code, body := setDNS(t, ctx, sLaptop, nkLaptop.Public(), own+".", "TXT", "laptop-token"); code != http.StatusOK {
		t.Fatalf("own record: %d %q", code, body)
	}
	for _, name := range []string{own, "_acme-challenge.server.tailnet.test", "laptop.tailnet.test"} {
		got, err := knot.TXT(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		want := []string(nil)
		if name == own {
			want = []string{"laptop-token"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("TXT %s = %v, want %v", name, got, want)
		}
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 10*time.Second, "records taken back at stop", func() error {
		if got, _ := knot.TXT(ctx, own); len(got) != 0 {
			return fmt.Errorf("still %v", got)
		}
		return nil
	})

	// Without dns.certificates, and with a DNS server that is not there.
	for _, tc := range []struct {
		name, yaml string
		code       int
		offered    bool
	}{
		{"off", "dns:\n  base_domain: tailnet.test\n", http.StatusNotImplemented, false},
		{"DNS server away", conf("127.0.0.1:1"), http.StatusBadGateway, true},
	} {
		ts := startServerWith(t, "", tc.yaml, nil)
		c := newClient(t, ts.URL)
		nk, _ := register(t, c, ts.key(t, true, time.Now().Add(time.Hour)), "laptop")
		sess, full := openMap(t, ctx, c, nk, "laptop")
		if got := full.DNSConfig != nil && len(full.DNSConfig.CertDomains) > 0; got != tc.offered {
			t.Errorf("%s: certificate domains offered = %v (%+v)", tc.name, got, full.DNSConfig)
		}
		code, body := setDNS(t, ctx, sess, nk.Public(), own, "TXT", "token")
		if code != tc.code || body == "" {
			t.Errorf("%s: set-dns %d %q, want %d with a reason", tc.name, code, body, tc.code)
		}
	}
}
