package mapper

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// TestCapabilities: a node's own entry in a full map carries the
// capabilities Headscale gives every node (admin, SSH, file sharing while
// Taildrop is on, default-auto-update as a JSON boolean,
// randomize-client-port when configured), with policy nodeAttrs laid over
// them; peers' entries carry none of them (as Headscale 0.29 and Tailscale
// send them).
func TestCapabilities(t *testing.T) {
	const (
		admin     = tailcfg.CapabilityAdmin
		ssh       = tailcfg.CapabilitySSH
		files     = tailcfg.CapabilityFileSharing
		update    = tailcfg.NodeAttrDefaultAutoUpdate
		randomize = tailcfg.NodeAttrRandomizeClientPort
	)
	tests := []struct {
		name   string
		opts   Options
		policy string // "" for none
		want   map[tailcfg.NodeCapability][]tailcfg.RawMessage
	}{
		{name: "Headscale's defaults", opts: Options{Taildrop: true},
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, files: nil, update: {"false"}}},
		{name: "taildrop off", opts: Options{},
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, update: {"false"}}},
		{name: "auto update on", opts: Options{Taildrop: true, AutoUpdate: true},
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, files: nil, update: {"true"}}},
		{name: "randomize_client_port", opts: Options{RandomizeClientPort: true},
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, update: {"false"}, randomize: nil}},
		{name: "policy randomizeClientPort", opts: Options{}, policy: `{"randomizeClientPort": true}`,
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, update: {"false"}, randomize: nil}},
		{name: "config and policy together", opts: Options{RandomizeClientPort: true}, policy: `{"randomizeClientPort": true}`,
			want: map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, update: {"false"}, randomize: nil}},
		{name: "nodeAttrs laid over", opts: Options{Taildrop: true},
			policy: `{"nodeAttrs": [{"target": ["*"], "attr": ["custom:attr", "default-auto-update"]}]}`,
			want:   map[tailcfg.NodeCapability][]tailcfg.RawMessage{admin: nil, ssh: nil, files: nil, update: nil, "custom:attr": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, users, pn, pu := policyWorld(3, 1)
			snap := state.Snapshot{Self: nodes[0], Peers: nodes[1:], Users: users}
			if tt.policy != "" {
				snap.Policy = compile(t, tt.policy, pu, pn)
			}
			hub := NewHub(New(tt.opts), HubOptions{})
			t.Cleanup(hub.Close)
			raw := hub.FullMapJSON(snap)
			var resp tailcfg.MapResponse
			if err := json.Unmarshal(raw, &resp); err != nil {
				t.Fatal(err)
			}
			// The value is a JSON boolean, not a string (what clients parse).
			if v := tt.want[update]; len(v) == 1 && !bytes.Contains(raw, []byte(`"default-auto-update":[`+string(v[0])+`]`)) {
				t.Errorf("default-auto-update is not [%s] on the wire: %s", v[0], raw)
			}
			if resp.Node == nil || len(resp.Peers) != 2 {
				t.Fatalf("self %v, %d peers", resp.Node != nil, len(resp.Peers))
			}
			got := map[tailcfg.NodeCapability][]tailcfg.RawMessage(resp.Node.CapMap)
			if !maps.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("self CapMap %v, want %v", got, tt.want)
			}
			for _, p := range resp.Peers {
				if len(p.CapMap) != 0 {
					t.Errorf("peer %d CapMap %v, want none", p.ID, p.CapMap)
				}
			}
		})
	}
}
