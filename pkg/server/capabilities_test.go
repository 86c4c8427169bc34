package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
)

// TestNodeCapabilities: a node registered with a running server finds the
// capabilities every node gets in its own node, from the configuration:
// with Headscale's defaults admin, SSH, file sharing and
// default-auto-update false; with taildrop.enabled false, auto_update
// and randomize_client_port on, no file sharing, auto-update true and
// randomize-client-port.
func TestNodeCapabilities(t *testing.T) {
	tests := []struct {
		name       string
		yaml       string
		want       []tailcfg.NodeCapability
		wantNot    []tailcfg.NodeCapability
		autoUpdate tailcfg.RawMessage
	}{
		{name: "defaults",
			want:       []tailcfg.NodeCapability{tailcfg.CapabilityAdmin, tailcfg.CapabilitySSH, tailcfg.CapabilityFileSharing},
			wantNot:    []tailcfg.NodeCapability{tailcfg.NodeAttrRandomizeClientPort},
			autoUpdate: "false"},
		{name: "taildrop off, auto update and random port on",
			yaml:       "taildrop:\n  enabled: false\nauto_update:\n  enabled: true\nrandomize_client_port: true\n",
			want:       []tailcfg.NodeCapability{tailcfg.CapabilityAdmin, tailcfg.CapabilitySSH, tailcfg.NodeAttrRandomizeClientPort},
			wantNot:    []tailcfg.NodeCapability{tailcfg.CapabilityFileSharing},
			autoUpdate: "true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := servertest.Start(t, engine(t, servertest.Options{ExtraYAML: tt.yaml}))
			n := ts.RegisterNode(t, ts.CreatePreAuthKey(t, ts.CreateUser(t, "alice"), false, time.Time{}), "box")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sess, err := n.Client.Map(ctx, tsp.MapOpts{NodeKey: n.Key, Stream: false, Hostinfo: &tailcfg.Hostinfo{Hostname: "box"}})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			resp, err := sess.Next()
			if err != nil {
				t.Fatalf("reading the full map: %v", err)
			}
			if resp.Node == nil {
				t.Fatal("no self node in the full map")
			}
			caps := resp.Node.CapMap
			for _, c := range tt.want {
				if !caps.Contains(c) {
					t.Errorf("self CapMap %v lacks %s", caps, c)
				}
			}
			for _, c := range tt.wantNot {
				if caps.Contains(c) {
					t.Errorf("self CapMap %v has %s", caps, c)
				}
			}
			if v := caps[tailcfg.NodeAttrDefaultAutoUpdate]; len(v) != 1 || v[0] != tt.autoUpdate {
				t.Errorf("default-auto-update %v, want [%s]", v, tt.autoUpdate)
			}
		})
	}
}
