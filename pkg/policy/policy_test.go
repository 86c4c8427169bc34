package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

var testUsers = []User{
	{ID: 1, Name: "alice", Email: "alice@example.com"},
	{ID: 2, Name: "bob", Email: "bob@example.com"},
	{ID: 3, Name: "carol", Email: "carol@example.org"},
}

func node(id ids.NodeID, user ids.UserID, host string, tags ...string) Node {
	return Node{
		ID: id, UserID: user, Tags: tags, Hostname: host,
		IPv4: netip.AddrFrom4([4]byte{100, 64, 0, byte(id)}),
		IPv6: netip.MustParseAddr("fd7a:115c:a1e0::" + string(rune('0'+id))),
	}
}

// testNodes: alice has two devices, bob one; three tagged servers, one of
// which routes 10.33.0.0/16 and one is an exit node.
func testNodes() []Node {
	router := node(6, 0, "router", "tag:router")
	router.ApprovedRoutes = []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}
	exit := node(7, 0, "exit", "tag:exit")
	exit.ApprovedRoutes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	return []Node{
		node(1, 1, "alice-laptop"),
		node(2, 1, "alice-phone"),
		node(3, 2, "bob-laptop"),
		node(4, 0, "server", "tag:server"),
		node(5, 0, "db", "tag:db"),
		router,
		exit,
	}
}

const tagOwners = `"tagOwners": {
		"tag:server": ["alice@"],
		"tag:db": ["group:admins"],
		"tag:router": ["alice@"],
		"tag:exit": ["alice@"],
		"tag:ci": ["tag:server"],
	},
	"groups": {"group:admins": ["alice@example.com"], "group:eng": ["alice@", "bob@"], "group:ops": ["ghost@", "bob@"]},`

func mustCompile(t *testing.T, src string, users []User, nodes []Node) (*Compiled, []string) {
	t.Helper()
	pol, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	c, warns, err := CompileWithOptions(pol, users, nodes, CompileOptions{ServerURL: "https://hs.example.com"})
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return c, warns
}

func ips(ids ...int) []string {
	var v4, v6 []string
	for _, id := range ids {
		v4 = append(v4, "100.64.0."+string(rune('0'+id)))
		v6 = append(v6, "fd7a:115c:a1e0::"+string(rune('0'+id)))
	}
	out := append(v4, v6...)
	slices.Sort(out)
	return out
}

// dst is DstPorts for node id's two addresses on ports.
func dst(id int, ports ...tailcfg.PortRange) []tailcfg.NetPortRange {
	var out []tailcfg.NetPortRange
	for _, ip := range []string{"100.64.0." + string(rune('0'+id)), "fd7a:115c:a1e0::" + string(rune('0'+id))} {
		for _, p := range ports {
			out = append(out, tailcfg.NetPortRange{IP: ip, Ports: p})
		}
	}
	return out
}

func port(p uint16) tailcfg.PortRange { return tailcfg.PortRange{First: p, Last: p} }

var anyPort = tailcfg.PortRangeAny

var wildSrc = []string{"10.33.0.0/16", "100.115.94.0-100.127.255.255", "100.64.0.0-100.115.91.255", "fd7a:115c:a1e0::/48"}

func js(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestFilter(t *testing.T) {
	tests := []struct {
		name   string
		policy string // inserted after tagOwners/groups
		want   map[ids.NodeID][]tailcfg.FilterRule
		warn   string // a warning that must be reported
	}{
		{
			name:   "user to user port 80 is one-way",
			policy: `"acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:80"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				1: {}, 2: {}, 4: {},
				3: {{SrcIPs: ips(1, 2), DstPorts: dst(3, port(80))}},
			},
		},
		{
			name:   "star to star",
			policy: `"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				1: {{SrcIPs: wildSrc, DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: anyPort}}}},
				6: {{SrcIPs: wildSrc, DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: anyPort}}}},
			},
		},
		{
			name:   "port lists and ranges with proto",
			policy: `"acls": [{"action": "accept", "proto": "tcp", "src": ["group:admins"], "dst": ["tag:server:22,443", "tag:db:5432-5433"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				4: {{SrcIPs: ips(1, 2), DstPorts: dst(4, port(22), port(443)), IPProto: []int{6}}},
				5: {{SrcIPs: ips(1, 2), DstPorts: dst(5, tailcfg.PortRange{First: 5432, Last: 5433}), IPProto: []int{6}}},
				3: {},
			},
		},
		{
			name:   "numeric proto and icmp",
			policy: `"acls": [{"action": "accept", "proto": "17", "src": ["bob@"], "dst": ["tag:db:53"]}, {"action": "accept", "proto": "icmp", "src": ["bob@"], "dst": ["tag:db:*"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				5: {
					{SrcIPs: ips(3), DstPorts: dst(5, port(53)), IPProto: []int{17}},
					{SrcIPs: ips(3), DstPorts: dst(5, anyPort), IPProto: []int{1}},
				},
			},
		},
		{
			name: "rules with the same sources are merged",
			policy: `"acls": [
				{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"]},
				{"action": "accept", "src": ["tag:db"], "dst": ["tag:server:5432"]},
				{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:80"]},
			]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				4: {
					{SrcIPs: ips(1, 2, 3), DstPorts: append(dst(4, port(22)), dst(4, port(80))...)},
					{SrcIPs: ips(5), DstPorts: dst(4, port(5432))},
				},
			},
		},
		{
			name:   "unknown user in a group is ignored",
			policy: `"acls": [{"action": "accept", "src": ["group:ops"], "dst": ["tag:db:22"]}]`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{5: {{SrcIPs: ips(3), DstPorts: dst(5, port(22))}}},
			warn:   `user "ghost@" matches no user`,
		},
		{
			name:   "hosts: a CIDR reaches its router, an address its node",
			policy: `"hosts": {"lab": "10.33.0.0/16", "dbhost": "100.64.0.5"}, "acls": [{"action": "accept", "src": ["bob@"], "dst": ["lab:*", "dbhost:5432"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				6: {{SrcIPs: ips(3), DstPorts: []tailcfg.NetPortRange{{IP: "10.33.0.0/16", Ports: anyPort}}}},
				5: {{SrcIPs: ips(3), DstPorts: []tailcfg.NetPortRange{{IP: "100.64.0.5", Ports: port(5432)}}}},
				4: {},
			},
		},
		{
			name:   "autogroup member and tagged",
			policy: `"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:22"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				4: {{SrcIPs: ips(1, 2, 3), DstPorts: dst(4, port(22))}},
				1: {},
			},
		},
		{
			name:   "autogroup self",
			policy: `"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				1: {{SrcIPs: ips(1, 2), DstPorts: dst(1, anyPort)}},
				2: {{SrcIPs: ips(1, 2), DstPorts: dst(2, anyPort)}},
				3: {{SrcIPs: ips(3), DstPorts: dst(3, anyPort)}},
				4: {},
			},
		},
		{
			name:   "danger-all source",
			policy: `"acls": [{"action": "accept", "src": ["autogroup:danger-all"], "dst": ["tag:server:443"]}]`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{4: {{SrcIPs: []string{"*"}, DstPorts: dst(4, port(443))}}},
		},
		{
			name:   "autogroup internet goes to exit nodes",
			policy: `"acls": [{"action": "accept", "src": ["bob@"], "dst": ["autogroup:internet:443"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				7: {{SrcIPs: ips(3), DstPorts: []tailcfg.NetPortRange{
					{IP: "0.0.0.0-9.255.255.255", Ports: port(443)},
					{IP: "11.0.0.0-100.63.255.255", Ports: port(443)},
					{IP: "100.128.0.0-169.253.255.255", Ports: port(443)},
					{IP: "169.255.0.0-172.15.255.255", Ports: port(443)},
					{IP: "172.32.0.0-192.167.255.255", Ports: port(443)},
					{IP: "192.169.0.0-255.255.255.255", Ports: port(443)},
					{IP: "2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Ports: port(443)},
				}}},
				6: {},
			},
		},
		{
			name:   "empty acls deny everything",
			policy: `"acls": []`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{1: {}, 4: {}},
		},
		{
			name:   "no acls or grants allow everything",
			policy: `"ssh": []`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				1: {{SrcIPs: []string{"*"}, DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: anyPort}}}},
			},
		},
		{
			name:   "grants: ip and app with taildrive companion",
			policy: `"grants": [{"src": ["bob@"], "dst": ["tag:server"], "ip": ["tcp:443", "udp:53"], "app": {"tailscale.com/cap/drive": [{"shares": ["*"], "access": "rw"}]}}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				4: {
					{SrcIPs: ips(3), DstPorts: dst(4, port(443)), IPProto: []int{6}},
					{SrcIPs: ips(3), DstPorts: dst(4, port(53)), IPProto: []int{17}},
					{SrcIPs: ips(3), CapGrant: []tailcfg.CapGrant{{
						Dsts:   []netip.Prefix{netip.MustParsePrefix("100.64.0.4/32"), netip.MustParsePrefix("fd7a:115c:a1e0::4/128")},
						CapMap: tailcfg.PeerCapMap{tailcfg.PeerCapabilityTaildrive: {`{"shares":["*"],"access":"rw"}`}},
					}}},
				},
				3: {{SrcIPs: ips(4), CapGrant: []tailcfg.CapGrant{{
					Dsts:   []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32"), netip.MustParsePrefix("fd7a:115c:a1e0::3/128")},
					CapMap: tailcfg.PeerCapMap{tailcfg.PeerCapabilityTaildriveSharer: nil},
				}}}},
			},
		},
		{
			name:   "grant via a router",
			policy: `"grants": [{"src": ["bob@"], "dst": ["10.33.1.0/24"], "ip": ["*"], "via": ["tag:router"]}]`,
			want: map[ids.NodeID][]tailcfg.FilterRule{
				6: {{SrcIPs: ips(3), DstPorts: []tailcfg.NetPortRange{{IP: "10.33.1.0/24", Ports: anyPort}}}},
				4: {},
			},
		},
		{
			name:   "user wildcard by domain",
			policy: `"acls": [{"action": "accept", "src": ["user:*@example.com"], "dst": ["tag:db:5432"]}]`,
			want:   map[ids.NodeID][]tailcfg.FilterRule{5: {{SrcIPs: ips(1, 2, 3), DstPorts: dst(5, port(5432))}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "{\n" + tagOwners + "\n" + tt.policy + "\n}"
			c, warns := mustCompile(t, src, testUsers, testNodes())
			for id, want := range tt.want {
				got := c.Filter(id)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("node %d:\n got %s\nwant %s", id, js(got), js(want))
				}
			}
			if tt.warn != "" && !strings.Contains(strings.Join(warns, "\n"), tt.warn) {
				t.Errorf("warnings %q lack %q", warns, tt.warn)
			}
		})
	}
}

func TestNoPolicy(t *testing.T) {
	c, warns, err := Compile(nil, testUsers, testNodes())
	if err != nil || warns != nil {
		t.Fatal(err, warns)
	}
	want := []tailcfg.FilterRule{{SrcIPs: []string{"*"}, DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: anyPort}}}}
	if got := c.Filter(1); !reflect.DeepEqual(got, want) {
		t.Errorf("filter %s", js(got))
	}
	if !c.CanSee(1, 5) || c.SSH(1) != nil || c.NodeCapabilities(1) != nil {
		t.Error("no policy must allow all, no SSH, no caps")
	}
	if p, err := Parse([]byte("  \n")); p != nil || err != nil {
		t.Errorf("empty file = %v, %v; want nil, nil", p, err)
	}
}

func TestTagChangeChangesFilter(t *testing.T) {
	src := "{" + tagOwners + `"acls": [{"action": "accept", "src": ["bob@"], "dst": ["tag:server:22"]}]}`
	nodes := testNodes()
	before, _ := mustCompile(t, src, testUsers, nodes)
	nodes[3].Tags = []string{"tag:db"} // server becomes a db
	after, _ := mustCompile(t, src, testUsers, nodes)
	if len(before.Filter(4)) != 1 || len(after.Filter(4)) != 0 {
		t.Errorf("before %s after %s", js(before.Filter(4)), js(after.Filter(4)))
	}
	if !before.CanSee(3, 4) || after.CanSee(3, 4) {
		t.Error("visibility must follow the tag")
	}
}

func TestDeletedUserInGroup(t *testing.T) {
	src := "{" + tagOwners + `"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}]}`
	// bob and his device are gone; the group still names him.
	users := testUsers[:1]
	var nodes []Node
	for _, n := range testNodes() {
		if n.UserID != 2 {
			nodes = append(nodes, n)
		}
	}
	c, warns := mustCompile(t, src, users, nodes)
	want := []tailcfg.FilterRule{{SrcIPs: ips(1, 2), DstPorts: dst(5, port(5432))}}
	if got := c.Filter(5); !reflect.DeepEqual(got, want) {
		t.Errorf("got %s", js(got))
	}
	if !strings.Contains(strings.Join(warns, "\n"), `"bob@" matches no user`) {
		t.Errorf("warnings %q", warns)
	}
}

func TestAmbiguousUser(t *testing.T) {
	users := append(slices.Clone(testUsers), User{ID: 9, Name: "alice", Email: "alice@other.example"})
	pol, err := Parse([]byte(`{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Compile(pol, users, testNodes()); err == nil || !strings.Contains(err.Error(), "1:40: acls[0].src[0]") {
		t.Errorf("err = %v", err)
	}
}

func TestCanSee(t *testing.T) {
	src := "{" + tagOwners + `"acls": [
		{"action": "accept", "src": ["alice@"], "dst": ["bob@:80"]},
		{"action": "accept", "src": ["bob@"], "dst": ["autogroup:self:*"]},
		{"action": "accept", "src": ["tag:db"], "dst": ["lab:22"]},
	], "hosts": {"lab": "10.33.0.0/16"}}`
	c, _ := mustCompile(t, src, testUsers, testNodes())
	tests := []struct {
		a, b ids.NodeID
		want bool
	}{
		{1, 3, true}, {3, 1, true}, // one-way rule, both visible
		{2, 3, true},
		{1, 2, false}, // alice is not a source of the self rule
		{1, 4, false},
		{5, 6, true}, {6, 5, true}, // the router serves the lab subnet
		{4, 5, false},
		{3, 3, true},
		{3, 99, false},
	}
	for _, tt := range tests {
		if got := c.CanSee(tt.a, tt.b); got != tt.want {
			t.Errorf("CanSee(%d, %d) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	if got := c.Peers(3); !reflect.DeepEqual(got, []ids.NodeID{1, 2}) {
		t.Errorf("Peers(3) = %v", got)
	}
}

func TestFilterSharing(t *testing.T) {
	src := "{" + tagOwners + `"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}`
	c, _ := mustCompile(t, src, testUsers, testNodes())
	a, b := c.Filter(1), c.Filter(5)
	if &a[0] != &b[0] || c.FilterKey(1) != c.FilterKey(5) {
		t.Error("identical filters should share a slice and key")
	}
	src = "{" + tagOwners + `"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:22"]}]}`
	c, _ = mustCompile(t, src, testUsers, testNodes())
	if c.FilterKey(5) == c.FilterKey(4) {
		t.Error("different filters must have different keys")
	}
}

func TestSSH(t *testing.T) {
	accept := &tailcfg.SSHAction{Accept: true, AllowAgentForwarding: true, AllowLocalPortForwarding: true, AllowRemotePortForwarding: true}
	check := &tailcfg.SSHAction{HoldAndDelegate: "https://hs.example.com" + SSHCheckPath}
	principals := func(ids ...int) []*tailcfg.SSHPrincipal {
		var out []*tailcfg.SSHPrincipal
		for _, ip := range ips(ids...) { // addresses in order: IPv4 first
			out = append(out, &tailcfg.SSHPrincipal{NodeIP: ip})
		}
		return out
	}
	tests := []struct {
		name string
		ssh  string
		want map[ids.NodeID]*tailcfg.SSHPolicy
	}{
		{
			name: "self with nonroot",
			ssh:  `[{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}]`,
			want: map[ids.NodeID]*tailcfg.SSHPolicy{
				1: {Rules: []*tailcfg.SSHRule{{Principals: principals(1, 2), SSHUsers: map[string]string{"*": "=", "root": ""}, Action: accept}}},
				3: {Rules: []*tailcfg.SSHRule{{Principals: principals(3), SSHUsers: map[string]string{"*": "=", "root": ""}, Action: accept}}},
				4: nil,
			},
		},
		{
			name: "root and named users",
			ssh:  `[{"action": "accept", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root", "deploy"], "acceptEnv": ["GIT_*"]}]`,
			want: map[ids.NodeID]*tailcfg.SSHPolicy{
				4: {Rules: []*tailcfg.SSHRule{{Principals: principals(1, 2), SSHUsers: map[string]string{"root": "root", "deploy": "deploy"}, Action: accept, AcceptEnv: []string{"GIT_*"}}}},
				1: nil,
			},
		},
		{
			name: "check before accept",
			ssh: `[
				{"action": "accept", "src": ["bob@"], "dst": ["tag:server"], "users": ["bob"]},
				{"action": "check", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "1h"},
			]`,
			want: map[ids.NodeID]*tailcfg.SSHPolicy{
				4: {Rules: []*tailcfg.SSHRule{
					{Principals: principals(1, 2), SSHUsers: map[string]string{"root": "root"}, Action: check},
					{Principals: principals(3), SSHUsers: map[string]string{"root": "", "bob": "bob"}, Action: accept},
				}},
			},
		},
		{
			name: "tagged source, listed once per tag",
			ssh:  `[{"action": "accept", "src": ["tag:db"], "dst": ["tag:server"], "users": ["root"]}]`,
			want: map[ids.NodeID]*tailcfg.SSHPolicy{
				4: {Rules: []*tailcfg.SSHRule{{Principals: principals(5), SSHUsers: map[string]string{"root": "root"}, Action: accept}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "{" + tagOwners + `"ssh": ` + tt.ssh + "}"
			c, _ := mustCompile(t, src, testUsers, testNodes())
			for id, want := range tt.want {
				got := c.SSH(id)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("node %d:\n got %s\nwant %s", id, js(got), js(want))
				}
			}
		})
	}
}

func TestNodeCapabilities(t *testing.T) {
	src := "{" + tagOwners + `"randomizeClientPort": true,
		"nodeAttrs": [
			{"target": ["tag:server", "bob@"], "attr": ["magicdns-aaaa", "nextdns:abc"]},
			{"target": ["autogroup:member"], "attr": ["drive:share", "drive:access"]},
			{"target": ["100.64.0.5"], "attr": ["disable-ipv4"]},
		]}`
	c, _ := mustCompile(t, src, testUsers, testNodes())
	tests := map[ids.NodeID][]tailcfg.NodeCapability{
		4: {"magicdns-aaaa", "nextdns:abc", "randomize-client-port"},
		3: {"drive:access", "drive:share", "magicdns-aaaa", "nextdns:abc", "randomize-client-port"},
		5: {"disable-ipv4", "randomize-client-port"},
		6: {"randomize-client-port"},
	}
	for id, want := range tests {
		if got := c.NodeCapabilities(id); !reflect.DeepEqual(got, want) {
			t.Errorf("node %d: got %v want %v", id, got, want)
		}
	}
	if m := c.NodeCapMap(5); len(m) != 2 {
		t.Errorf("cap map %v", m)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"trailing garbage", "{\"acls\": []}\n  x", "2:3: parsing HuJSON"},
		// A newline inside the quoted text hujson reports (found by FuzzParse).
		{"newline in a bad literal", " \"\n\"0", "1:2: parsing HuJSON: invalid literal"},
		{"unknown field", "{\n  \"acls\": [],\n  \"aclz\": 1,\n}", `3:3: aclz: unknown field "aclz"`},
		{"legacy acl keys", "{\"acls\": [{\"action\": \"accept\", \"users\": [\"*\"], \"dst\": [\"*:*\"]}]}", `1:32: acls[0].users: unknown field "users"; Tailscale's legacy spelling; use "src"`},
		{"undefined group", "{\"acls\": [\n  {\"action\": \"accept\", \"src\": [\"group:nope\"], \"dst\": [\"*:*\"]}]}", `2:32: acls[0].src[0]: group "group:nope" not defined in policy`},
		{"bad port", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:99999\"]}]}", `1:54: acls[0].dst[0]: dst="*:99999": port range "99999": port 99999 out of range 0-65535`},
		{"zero port", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:0\"]}]}", `1:54: acls[0].dst[0]`},
		{"unknown autogroup", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"autogroup:admin\"], \"dst\": [\"*:*\"]}]}", `1:40: acls[0].src[0]: unknown autogroup "autogroup:admin"`},
		{"autogroup in the wrong place", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"autogroup:self\"], \"dst\": [\"*:*\"]}]}", `1:40: acls[0].src[0]: "autogroup:self" not valid on the src side of a rule`},
		{"tag without owner", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"tag:web:443\"]}]}", `1:54: acls[0].dst[0]: tag "tag:web" not found in tagOwners`},
		{"cyclic groups", "{\"groups\": {\n  \"group:a\": [\"group:b\"],\n  \"group:b\": [\"group:a\"]}}", `2:15: groups["group:a"][0]: group "group:a" contains group "group:b": group members cannot be recursive`},
		{"bad action", "{\"acls\": [{\"action\": \"drop\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}", `1:22: acls[0].action: action="drop" is not supported`},
		{"ssh star dst", "{\"ssh\": [{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"*\"], \"users\": [\"root\"]}]}", `1:68: ssh[0].dst[0]: wildcard (*) is not supported as SSH destination`},
		{"ssh host dst", "{\"hosts\": {\"h\": \"10.0.0.1\"}, \"ssh\": [{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"h\"], \"users\": [\"root\"]}]}", `ssh[0].dst[0]: invalid dst "h"`},
		{"ssh tag to user", "{" + tagOwners + "\"ssh\": [{\"action\": \"accept\", \"src\": [\"tag:server\"], \"dst\": [\"bob@\"], \"users\": [\"root\"]}]}", `ssh[0].dst[0]: tags in SSH source cannot access user-owned devices`},
		{"ssh user dst needs same user", "{\"ssh\": [{\"action\": \"accept\", \"src\": [\"alice@\"], \"dst\": [\"bob@\"], \"users\": [\"root\"]}]}", `ssh[0].dst[0]: user destination requires source to contain only that same user "bob@"`},
		{"duplicate key", "{\"acls\": [], \"ACLs\": []}", `1:14: ACLs: duplicate key "ACLs"`},
		{"bad proto", "{\"acls\": [{\"action\": \"accept\", \"proto\": \"foo\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}", `1:41: acls[0].proto: invalid protocol "foo"`},
		{"ports with icmp", "{\"acls\": [{\"action\": \"accept\", \"proto\": \"icmp\", \"src\": [\"*\"], \"dst\": [\"*:22\"]}]}", `acls[0].proto: protocol "icmp" does not support specific ports`},
		{"grant without ip or app", "{\"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"]}]}", `1:13: grants[0]: ip and app can not both be empty`},
		{"via not a tag", "{\"grants\": [{\"src\": [\"*\"], \"dst\": [\"10.0.0.0/8\"], \"ip\": [\"*\"], \"via\": [\"alice@\"]}]}", `grants[0].via[0]: via can only be a tag`},
		{"undefined host", "{\"acls\": [{\"action\": \"accept\", \"src\": [\"nas\"], \"dst\": [\"*:*\"]}]}", `1:40: acls[0].src[0]: host "nas" not defined in policy`},
		{"comments keep positions", "// header\n{\n  /* c */ \"acls\": [{\"action\": \"accept\", \"src\": [\"tag:x\"], \"dst\": [\"*:*\"],},],\n}", `3:49: acls[0].src[0]: tag "tag:x" not found in tagOwners`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.src))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Line == 0 {
				t.Errorf("error has no position: %#v", err)
			}
		})
	}
}

func TestParseAcceptsTailscaleSyntax(t *testing.T) {
	src := `// Example policy
{
	"groups": {"group:eng": ["alice@example.com", "bob@"],},
	"hosts": {"lab": "10.33.0.0/16", "v6": "fd7a:115c:a1e0::/64"},
	"tagOwners": {"tag:server": ["group:eng"], "tag:ci": ["tag:server"]},
	"ACLs": [
		// comment
		{"action": "accept", "#meta": "ignored", "src": ["group:eng"], "dst": ["tag:server:22", "[fd7a:115c:a1e0::1]:80", "lab:*"]},
	],
	"grants": [{"src": ["*"], "dst": ["tag:server"], "ip": ["tcp:443", "icmp:*", "8080-8090"]}],
	"autoApprovers": {"routes": {"10.33.0.0/16": ["tag:server"]}, "exitNode": ["group:eng"]},
	"ssh": [{"action": "check", "src": ["group:eng"], "dst": ["tag:server"], "users": ["autogroup:nonroot", "root"], "checkPeriod": "always"}],
	"nodeAttrs": [{"target": ["*"], "attr": ["magicdns-aaaa"]}],
	"randomizeClientPort": false,
	"tests": [{"src": "bob@", "accept": ["tag:server:22"], "deny": ["tag:server:23"]}],
	"sshTests": [{"src": "bob@", "dst": ["tag:server"], "check": ["ubuntu"]}],
}`
	if _, err := Parse([]byte(src)); err != nil {
		t.Fatal(err)
	}
}

func TestRunTests(t *testing.T) {
	base := "{" + tagOwners + `
	"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"]},
	         {"action": "accept", "proto": "udp", "src": ["bob@"], "dst": ["tag:db:53"]},
	         {"action": "accept", "src": ["bob@"], "dst": ["autogroup:self:*"]}],
	"ssh": [{"action": "check", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root"]},
	        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}],
	`
	tests := []struct {
		name  string
		tests string
		want  []string // each a failure that must be reported
	}{
		{
			name: "all pass",
			tests: `"tests": [
				{"src": "alice@", "accept": ["tag:server:22", "100.64.0.4:22"], "deny": ["tag:server:80", "tag:db:53"]},
				{"src": "bob@", "proto": "udp", "accept": ["tag:db:53"]},
				{"src": "bob@", "proto": "tcp", "deny": ["tag:db:53"]},
				{"src": "bob@", "accept": ["autogroup:self:22"]},
			],
			"sshTests": [
				{"src": "alice@", "dst": ["tag:server"], "check": ["root"], "accept": ["root"]},
				{"src": "bob@", "dst": ["tag:server"], "deny": ["root"]},
				{"src": "alice@", "dst": ["autogroup:self"], "accept": ["alice"], "deny": ["root"]},
			]`,
		},
		{
			name: "failures carry positions",
			tests: `"tests": [
				{"src": "alice@", "accept": ["tag:db:53"], "deny": ["tag:server:22"]},
			],
			"sshTests": [
				{"src": "bob@", "dst": ["tag:server"], "accept": ["root"]},
				{"src": "alice@", "dst": ["autogroup:self"], "check": ["alice"]},
			]`,
			want: []string{
				`@"tag:db:53"|tests[0].accept[0]: alice@ -> tag:db:53: expected ALLOWED, got DENIED`,
				`@"tag:server:22"]}|tests[0].deny[0]: alice@ -> tag:server:22: expected DENIED, got ALLOWED`,
				`@"root"]},|sshTests[0].accept[0]: bob@/root -> server: expected ALLOWED, got DENIED`,
				`@"alice"]}|sshTests[1].check[0]: alice@/alice -> alice-laptop: expected ALLOWED via check, got ALLOWED via accept`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := base + tt.tests + "}"
			c, _ := mustCompile(t, src, testUsers, testNodes())
			err := c.RunTests()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("tests passed, want failures")
			}
			for _, w := range tt.want {
				// "@needle|msg": the error must point at the last
				// occurrence of needle in the source.
				needle, msg, _ := strings.Cut(strings.TrimPrefix(w, "@"), "|")
				line, col := newSource([]byte(src)).position(strings.LastIndex(src, needle))
				w = fmt.Sprintf("%d:%d: %s", line, col, msg)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nlacks %q", err, w)
				}
			}
		})
	}
}

func TestTagOwnerAllowed(t *testing.T) {
	pol, err := Parse([]byte("{" + tagOwners + "}"))
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := testUsers[0], testUsers[1]
	tests := []struct {
		name  string
		tag   string
		user  User
		owned []string
		want  bool
	}{
		{"direct user owner", "tag:server", alice, nil, true},
		{"not an owner", "tag:server", bob, nil, false},
		{"group owner", "tag:db", alice, nil, true},
		{"tag owns tag", "tag:ci", User{}, []string{"tag:server"}, true},
		{"owner of the owning tag", "tag:ci", alice, nil, true},
		{"holding the tag itself", "tag:db", User{}, []string{"tag:db"}, true},
		{"wrong owning tag", "tag:ci", User{}, []string{"tag:db"}, false},
		{"unknown tag", "tag:nope", alice, []string{"tag:nope"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pol.TagOwnerAllowed(tt.tag, tt.user, tt.owned); got != tt.want {
				t.Errorf("got %v want %v", got, tt.want)
			}
		})
	}
}

func TestAutoApprove(t *testing.T) {
	pol, err := Parse([]byte("{" + tagOwners + `"autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router", "group:eng"]}, "exitNode": ["tag:exit"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := testNodes()
	router, exit, bobLaptop, server := nodes[5], nodes[6], nodes[2], nodes[3]
	sub := netip.MustParsePrefix("10.33.0.0/16")
	if !pol.AutoApproveRoute(sub, router, testUsers) || !pol.AutoApproveRoute(sub, bobLaptop, testUsers) {
		t.Error("router (tag) and bob (group member) should be approved for a sub-prefix")
	}
	if pol.AutoApproveRoute(sub, server, testUsers) || pol.AutoApproveRoute(netip.MustParsePrefix("192.168.0.0/24"), router, testUsers) {
		t.Error("unlisted node or prefix approved")
	}
	if !pol.AutoApproveExitNode(exit, testUsers) || pol.AutoApproveExitNode(router, testUsers) {
		t.Error("exit node approval wrong")
	}
}

func TestConcurrentReads(t *testing.T) {
	src, users, nodes := benchWorld(500, 100)
	pol, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := Compile(pol, users, nodes)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []string, 4)
	for range 4 {
		go func() {
			var keys []string
			for _, n := range nodes {
				keys = append(keys, js(c.Filter(n.ID)))
				c.CanSee(n.ID, nodes[0].ID)
				c.SSH(n.ID)
			}
			done <- keys
		}()
	}
	first := <-done
	for range 3 {
		if got := <-done; !reflect.DeepEqual(got, first) {
			t.Fatal("concurrent readers disagree")
		}
	}
}

func TestSSHCheckPeriod(t *testing.T) {
	src := `{` + tagOwners + `
	"ssh": [
		{"action": "check", "src": ["alice@"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "1h"},
		{"action": "check", "src": ["group:eng"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "20h"},
		{"action": "check", "src": ["bob@"], "dst": ["tag:db"], "users": ["root"], "checkPeriod": "always"},
		{"action": "check", "src": ["alice@"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
		{"action": "accept", "src": ["bob@"], "dst": ["tag:router"], "users": ["root"]}
	]}`
	c, _ := mustCompile(t, src, testUsers, testNodes())
	tests := []struct {
		src, dst ids.NodeID
		want     time.Duration
	}{
		{1, 4, time.Hour},              // shortest of the two rules covering alice -> server
		{3, 4, 20 * time.Hour},         // bob only through group:eng
		{3, 5, 0},                      // "always"
		{1, 2, DefaultSSHCheckPeriod},  // autogroup:self, no checkPeriod
		{3, 6, DefaultSSHCheckPeriod},  // accept rule: no check
		{99, 4, DefaultSSHCheckPeriod}, // unknown node
	}
	for _, tt := range tests {
		if got := c.SSHCheckPeriod(tt.src, tt.dst); got != tt.want {
			t.Errorf("SSHCheckPeriod(%d, %d) = %v, want %v", tt.src, tt.dst, got, tt.want)
		}
	}
}
