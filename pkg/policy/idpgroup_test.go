package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

// idpUsers are testUsers with the groups an identity provider reported at
// their last login: alice is in "eng" and Keycloak-style "/vpn-admins",
// bob in "eng" and a Google-style group address; carol in none.
var idpUsers = []User{
	{ID: 1, Name: "alice", Email: "alice@example.com", Groups: []string{"eng", "/vpn-admins"}},
	{ID: 2, Name: "bob", Email: "bob@example.com", Groups: []string{"eng", "sre@example.com"}},
	{ID: 3, Name: "carol", Email: "carol@example.org"},
}

// idpHeader defines a policy group "group:eng" that is not the provider's
// "eng" (bob only), and a policy group that includes a provider group.
const idpHeader = `"groups": {
		"group:eng": ["bob@"],
		"group:vpn": ["carol@", "oidcgroup:/vpn-admins"],
	},
	"tagOwners": {
		"tag:server": ["oidcgroup:/vpn-admins"],
		"tag:db": ["group:vpn"],
		"tag:router": ["oidcgroup:nobody"],
		"tag:exit": ["alice@"],
	},`

func TestIdPGroupFilter(t *testing.T) {
	tests := []struct {
		name   string
		policy string // inserted after idpHeader
		want   map[ids.NodeID][]tailcfg.FilterRule
	}{
		{
			name:   "acl source",
			policy: `"acls": [{"action": "accept", "src": ["oidcgroup:/vpn-admins"], "dst": ["tag:server:22"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				4: {{SrcIPs: ips(1, 2), DstPorts: dst(4, port(22))}},
				3: {},
			},
		},
		{
			name:   "acl destination with @ in the group name",
			policy: `"acls": [{"action": "accept", "src": ["tag:server"], "dst": ["oidcgroup:sre@example.com:80"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				3: {{SrcIPs: ips(4), DstPorts: dst(3, port(80))}},
				1: {}, 2: {},
			},
		},
		{
			name:   "grant source and destination",
			policy: `"grants": [{"src": ["oidcgroup:eng"], "dst": ["oidcgroup:sre@example.com"], "ip": ["tcp:443"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				3: {{SrcIPs: ips(1, 2, 3), DstPorts: dst(3, port(443)), IPProto: []int{6}}},
				1: {}, 4: {},
			},
		},
		{
			name:   "provider group and policy group of the same name stay apart",
			policy: `"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}, {"action": "accept", "src": ["oidcgroup:eng"], "dst": ["tag:server:22"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				5: {{SrcIPs: ips(3), DstPorts: dst(5, port(5432))}},
				4: {{SrcIPs: ips(1, 2, 3), DstPorts: dst(4, port(22))}},
			},
		},
		{
			name:   "policy group including a provider group",
			policy: `"acls": [{"action": "accept", "src": ["group:vpn"], "dst": ["tag:server:22"]}]`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{4: {{SrcIPs: ips(1, 2), DstPorts: dst(4, port(22))}}},
		},
		{
			name:   "a group nobody has matches nobody",
			policy: `"acls": [{"action": "accept", "src": ["oidcgroup:nobody"], "dst": ["tag:server:22"]}, {"action": "accept", "src": ["tag:db"], "dst": ["oidcgroup:nobody:*"]}]`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{4: {}, 1: {}, 3: {}},
		},
		{
			name:   "autogroup:self with a provider group source",
			policy: `"acls": [{"action": "accept", "src": ["oidcgroup:sre@example.com"], "dst": ["autogroup:self:*"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				3: {{SrcIPs: ips(3), DstPorts: dst(3, anyPort)}},
				1: {}, 2: {},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "{\n" + idpHeader + "\n" + tt.policy + "\n}"
			c, warns := mustCompile(t, src, idpUsers, testNodes())
			for id, want := range tt.want {
				if got := c.Filter(id); !reflect.DeepEqual(got, want) {
					t.Errorf("node %d:\n got %s\nwant %s", id, js(got), js(want))
				}
			}
			for _, w := range warns {
				if strings.Contains(w, "oidcgroup") {
					t.Errorf("unexpected warning %q", w)
				}
			}
		})
	}
}

func TestIdPGroupSSHAndAttrs(t *testing.T) {
	src := "{" + idpHeader + `
	"ssh": [
		{"action": "accept", "src": ["oidcgroup:/vpn-admins"], "dst": ["tag:server"], "users": ["root"]},
		{"action": "accept", "src": ["oidcgroup:nobody"], "dst": ["tag:db"], "users": ["root"]},
		{"action": "accept", "src": ["oidcgroup:sre@example.com"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
	],
	"nodeAttrs": [{"target": ["oidcgroup:sre@example.com"], "attr": ["magicdns-aaaa"]}],
	"tests": [{"src": "oidcgroup:/vpn-admins", "accept": ["tag:server:22"]}],
	"sshTests": [{"src": "oidcgroup:/vpn-admins", "dst": ["tag:server"], "accept": ["root"]}],
	}`
	c, _ := mustCompile(t, src, idpUsers, testNodes())
	got := c.SSH(4)
	if got == nil || len(got.Rules) != 1 {
		t.Fatalf("server SSH policy %s, want one rule", js(got))
	}
	var principals []string
	for _, p := range got.Rules[0].Principals {
		principals = append(principals, p.NodeIP)
	}
	if want := ips(1, 2); !reflect.DeepEqual(principals, want) {
		t.Errorf("SSH principals %v, want %v", principals, want)
	}
	for id, want := range map[ids.NodeID][]string{3: ips(3), 1: nil} {
		var got []string
		if p := c.SSH(id); p != nil {
			for _, r := range p.Rules {
				for _, pr := range r.Principals {
					got = append(got, pr.NodeIP)
				}
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("node %d: autogroup:self SSH principals %v, want %v", id, got, want)
		}
	}
	if db := c.SSH(5); db != nil && len(db.Rules) != 0 {
		t.Errorf("a group nobody has gave SSH rules: %s", js(db))
	}
	if caps := c.NodeCapabilities(3); !reflect.DeepEqual(caps, []tailcfg.NodeCapability{"magicdns-aaaa"}) {
		t.Errorf("bob's node capabilities %v", caps)
	}
	if caps := c.NodeCapabilities(1); len(caps) != 0 {
		t.Errorf("alice's node capabilities %v", caps)
	}
	if err := c.RunTests(); err != nil {
		t.Errorf("policy tests: %v", err)
	}
}

func TestIdPGroupOwners(t *testing.T) {
	pol, err := Parse([]byte("{" + idpHeader + `"autoApprovers": {"routes": {"10.0.0.0/8": ["oidcgroup:eng"]}, "exitNode": ["group:vpn"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	alice, bob, carol := idpUsers[0], idpUsers[1], idpUsers[2]
	aliceLeft := alice
	aliceLeft.Groups = []string{"eng"}
	owners := []struct {
		name string
		tag  string
		user User
		want bool
	}{
		{"provider group owner", "tag:server", alice, true},
		{"not in the provider group", "tag:server", bob, false},
		{"left the provider group", "tag:server", aliceLeft, false},
		{"through a policy group", "tag:db", alice, true},
		{"policy group's own member", "tag:db", carol, true},
		{"owner group nobody has", "tag:router", alice, false},
	}
	for _, tt := range owners {
		t.Run("tagOwners/"+tt.name, func(t *testing.T) {
			if got := pol.TagOwnerAllowed(tt.tag, tt.user, nil); got != tt.want {
				t.Errorf("TagOwnerAllowed(%s, %s) = %v, want %v", tt.tag, tt.user.Name, got, tt.want)
			}
		})
	}
	sub := netip.MustParsePrefix("10.33.0.0/16")
	nodes := testNodes()
	routes := []struct {
		name  string
		node  Node
		users []User
		want  bool
	}{
		{"member's node", nodes[2], idpUsers, true},
		{"member's other node", nodes[0], idpUsers, true},
		{"member left the group", nodes[0], []User{aliceLeft, bob, carol}, true},
		{"tagged node", nodes[3], idpUsers, false},
		{"nobody in the group", nodes[2], testUsers, false},
	}
	for _, tt := range routes {
		t.Run("autoApprovers.routes/"+tt.name, func(t *testing.T) {
			if got := pol.AutoApproveRoute(sub, tt.node, tt.users); got != tt.want {
				t.Errorf("AutoApproveRoute = %v, want %v", got, tt.want)
			}
		})
	}
	if !pol.AutoApproveExitNode(nodes[0], idpUsers) || pol.AutoApproveExitNode(nodes[0], []User{aliceLeft, bob, carol}) {
		t.Error("exitNode approval through a policy group with a provider group is wrong")
	}
}

func TestIdPGroupParse(t *testing.T) {
	tests := []struct {
		name, src, want string // want "" means it parses
	}{
		{"empty name", `{"acls": [{"action": "accept", "src": ["oidcgroup:"], "dst": ["*:*"]}]}`, `1:40: acls[0].src[0]: "oidcgroup:" names no group`},
		{"empty name in a group", `{"groups": {"group:a": ["oidcgroup: "]}}`, `groups["group:a"][0]: "oidcgroup:" names no group`},
		{"spaces and colons in the name", `{"acls": [{"action": "accept", "src": ["oidcgroup:Domain Users"], "dst": ["oidcgroup:a:b:22"]}]}`, ""},
		{"ssh user destination needs that user", `{"ssh": [{"action": "accept", "src": ["oidcgroup:eng"], "dst": ["alice@"], "users": ["root"]}]}`, `ssh[0].dst[0]: user destination requires source to contain only that same user`},
		{"ssh self", `{"ssh": [{"action": "accept", "src": ["oidcgroup:eng"], "dst": ["autogroup:self"], "users": ["root"]}]}`, ""},
		{"grant self", `{"grants": [{"src": ["oidcgroup:eng"], "dst": ["autogroup:self"], "ip": ["*"]}]}`, ""},
		{"tag owner", `{"tagOwners": {"tag:a": ["oidcgroup:eng"]}}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.src))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("no error, want %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestNamesIdPGroup(t *testing.T) {
	pol, err := Parse([]byte("{" + idpHeader + `"acls": [{"action": "accept", "src": ["oidcgroup:eng"], "dst": ["oidcgroup:sre@example.com:22"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		groups []string
		want   bool
	}{
		{[]string{"eng"}, true},
		{[]string{"sre@example.com"}, true},
		{[]string{"/vpn-admins"}, true}, // through group:vpn
		{[]string{"nobody"}, true},      // tagOwners
		{[]string{"other", "Eng"}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := pol.NamesIdPGroup(tt.groups...); got != tt.want {
			t.Errorf("NamesIdPGroup(%q) = %v, want %v", tt.groups, got, tt.want)
		}
	}
	var none *Policy
	if none.NamesIdPGroup("eng") {
		t.Error("no policy names a group")
	}
}

// TestUpdateIdPGroupChange: Update (the path a node change takes) stays
// incremental when users differ only in provider groups the policy does
// not name, and compiles from scratch when a named group changed.
func TestUpdateIdPGroupChange(t *testing.T) {
	pol, err := Parse([]byte("{" + idpHeader + `"acls": [{"action": "accept", "src": ["oidcgroup:eng"], "dst": ["tag:server:22"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := testNodes()
	c := mustFull(t, pol, idpUsers, nodes)
	withGroups := func(id ids.UserID, groups ...string) []User {
		out := slices.Clone(idpUsers)
		for i := range out {
			if out[i].ID == id {
				out[i].Groups = groups
			}
		}
		return out
	}
	tests := []struct {
		name  string
		users []User
		full  bool
	}{
		{"same users", slices.Clone(idpUsers), false},
		{"unnamed group joined", withGroups(3, "marketing"), false},
		{"unnamed group left, named kept", withGroups(2, "eng"), false},
		{"named group joined", withGroups(3, "eng"), true},
		{"named group left", withGroups(1, "/vpn-admins"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, aff, _, err := c.Update(tt.users, nodes, []ids.NodeID{1})
			if err != nil {
				t.Fatal(err)
			}
			if aff.All() != tt.full {
				t.Errorf("compiled from scratch: %v, want %v", aff.All(), tt.full)
			}
			if got, want := fullView(nc, nodeIDs(nodes)), fullView(mustFull(t, pol, tt.users, nodes), nodeIDs(nodes)); got != want {
				t.Errorf("Update differs from a full compilation:\n%s\nwant\n%s", got, want)
			}
		})
	}
}
