package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"github.com/hsctl/headscale/pkg/ids"
)

// Random policies and tailnets for property tests: every construct the
// compiler handles (users, groups, tags, hosts, prefixes, autogroups,
// ports and protocols, grants with app capabilities and via, ssh,
// nodeAttrs, autoApprovers, tests), over a small address space so that
// rules, hosts and routes overlap often.

var genUsers = []User{
	{ID: 1, Name: "alice", Email: "alice@example.com", Groups: []string{"eng", "/vpn-admins"}},
	{ID: 2, Name: "bob", Email: "bob@example.com", Groups: []string{"eng"}},
	{ID: 3, Name: "carol", Email: "carol@example.org"},
	{ID: 4, Name: "dave", Email: "dave@example.org", Groups: []string{"ops@example.org"}},
}

var (
	genTags   = []string{"tag:web", "tag:db", "tag:router", "tag:exit", "tag:ci"}
	genRoutes = []string{"10.33.0.0/16", "10.33.1.0/24", "192.168.1.0/24", "0.0.0.0/0", "::/0", "fd00:1::/64", "8.8.8.0/24", "100.64.0.0/28"}
	genSrcs   = []string{
		"*", "alice@", "bob@", "carol@", "dave@example.org", "group:eng", "group:admins", "group:ops",
		"tag:web", "tag:db", "tag:router", "tag:exit", "autogroup:member", "autogroup:tagged",
		"lab", "db", "100.64.0.0/26", "10.33.0.0/16", "user:*@example.com", "fd7a:115c:a1e0::/120",
		"autogroup:danger-all", "oidcgroup:eng", "oidcgroup:/vpn-admins", "oidcgroup:nobody",
	}
	genSelfSrcs = []string{"*", "alice@", "bob@", "carol@", "group:eng", "group:ops", "autogroup:member", "oidcgroup:eng"}
	genDsts     = []string{
		"*", "alice@", "bob@", "carol@", "group:eng", "group:admins", "tag:web", "tag:db", "tag:router",
		"tag:exit", "autogroup:member", "autogroup:tagged", "autogroup:internet", "lab", "db",
		"100.64.0.0/26", "10.33.1.0/24", "192.168.0.0/16", "8.8.0.0/16", "fd7a:115c:a1e0::/120",
		"oidcgroup:ops@example.org",
	}
	genPorts  = []string{"*", "22", "80,443", "1000-2000"}
	genProtos = []string{"", "", "", "tcp", "udp", "icmp"}
	genIPs    = []string{"*", "tcp:443", "udp:53", "22", "icmp:*", "80-90"}
	genApps   = []string{
		`"tailscale.com/cap/drive": [{"shares": ["*"], "access": "rw"}]`,
		`"tailscale.com/cap/relay": [{}]`,
		`"example.com/cap/x": [{"a": 1}]`,
	}
	genViaDsts = []string{"10.33.0.0/16", "10.33.1.0/24", "192.168.1.0/24", "autogroup:internet", "8.8.0.0/16"}
)

const genHeader = `
	"groups": {
		"group:eng": ["alice@", "bob@"],
		"group:admins": ["alice@example.com"],
		"group:ops": ["ghost@", "carol@", "oidcgroup:ops@example.org"],
	},
	"tagOwners": {
		"tag:web": ["alice@"], "tag:db": ["group:admins"], "tag:router": ["alice@"],
		"tag:exit": ["alice@"], "tag:ci": ["tag:web"],
	},
	"hosts": {"lab": "10.33.0.0/16", "db": "100.64.0.5"},
`

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

// picks returns 1..max distinct quoted elements of xs.
func picks(rng *rand.Rand, xs []string, max int) []string {
	n := 1 + rng.IntN(max)
	seen := map[string]bool{}
	var out []string
	for range n {
		x := pick(rng, xs)
		if !seen[x] {
			seen[x] = true
			out = append(out, fmt.Sprintf("%q", x))
		}
	}
	return out
}

func list(xs []string) string { return "[" + strings.Join(xs, ", ") + "]" }

// genPolicy returns a random policy text; some are rejected by Parse
// (callers retry).
func genPolicy(rng *rand.Rand) string {
	var b strings.Builder
	b.WriteString("{" + genHeader)
	if rng.IntN(8) == 0 {
		b.WriteString(`"randomizeClientPort": true,` + "\n")
	}
	switch rng.IntN(10) {
	case 0: // neither acls nor grants: allow-all
	case 1:
		b.WriteString(`"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],` + "\n")
	default:
		if rng.IntN(4) != 0 {
			b.WriteString(`"acls": [` + "\n")
			for range rng.IntN(6) {
				var dsts []string
				self := rng.IntN(4) == 0
				srcPool := genSrcs
				if self {
					srcPool = genSelfSrcs
					dsts = append(dsts, fmt.Sprintf("%q", "autogroup:self:"+pick(rng, genPorts)))
				}
				for range rng.IntN(3) + 1 - btoi(self) {
					dsts = append(dsts, fmt.Sprintf("%q", pick(rng, genDsts)+":"+pick(rng, genPorts)))
				}
				proto := pick(rng, genProtos)
				if proto == "icmp" {
					for i := range dsts {
						dsts[i] = dsts[i][:strings.LastIndex(dsts[i], ":")] + `:*"`
					}
				}
				fmt.Fprintf(&b, `{"action": "accept", %s"src": %s, "dst": %s},`+"\n",
					protoField(proto), list(picks(rng, srcPool, 3)), list(dsts))
			}
			b.WriteString("],\n")
		}
		if rng.IntN(2) == 0 {
			b.WriteString(`"grants": [` + "\n")
			for range rng.IntN(5) {
				b.WriteString(genGrant(rng) + ",\n")
			}
			b.WriteString("],\n")
		}
	}
	if rng.IntN(3) != 0 {
		b.WriteString(`"ssh": [` + "\n")
		for range rng.IntN(4) {
			b.WriteString(genSSH(rng) + ",\n")
		}
		b.WriteString("],\n")
	}
	if rng.IntN(2) == 0 {
		b.WriteString(`"nodeAttrs": [` + "\n")
		for range 1 + rng.IntN(3) {
			fmt.Fprintf(&b, `{"target": %s, "attr": %s},`+"\n",
				list(picks(rng, []string{"*", "alice@", "group:eng", "tag:web", "tag:db", "autogroup:member", "autogroup:tagged", "100.64.0.0/26"}, 2)),
				list(picks(rng, []string{"magicdns-aaaa", "nextdns:abc", "drive:share", "disable-ipv4"}, 2)))
		}
		b.WriteString("],\n")
	}
	if rng.IntN(3) == 0 {
		b.WriteString(`"autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router", "group:eng"]}, "exitNode": ["tag:exit", "alice@"]},` + "\n")
	}
	if rng.IntN(3) == 0 {
		b.WriteString(`"tests": [` + "\n")
		for range 1 + rng.IntN(3) {
			fmt.Fprintf(&b, `{"src": %q, "accept": [%q], "deny": [%q]},`+"\n",
				pick(rng, []string{"alice@", "bob@", "tag:web", "tag:db", "db", "group:eng", "100.64.0.9"}),
				pick(rng, []string{"tag:web:22", "tag:db:443", "db:80", "alice@:22", "autogroup:self:22", "100.64.0.7:1000"}),
				pick(rng, []string{"tag:web:23", "tag:db:5432", "bob@:22", "autogroup:member:80"}))
		}
		b.WriteString("],\n")
		b.WriteString(`"sshTests": [` + "\n")
		for range rng.IntN(3) {
			fmt.Fprintf(&b, `{"src": %q, "dst": [%q], "accept": ["root"], "deny": ["ubuntu"], "check": ["alice"]},`+"\n",
				pick(rng, []string{"alice@", "bob@", "tag:web", "carol@"}),
				pick(rng, []string{"tag:web", "tag:db", "autogroup:self", "alice@", "autogroup:member"}))
		}
		b.WriteString("],\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func protoField(p string) string {
	if p == "" {
		return ""
	}
	return fmt.Sprintf(`"proto": %q, `, p)
}

func genGrant(rng *rand.Rand) string {
	if rng.IntN(5) == 0 { // via
		return fmt.Sprintf(`{"src": %s, "dst": %s, "ip": %s, "via": ["tag:router"%s]}`,
			list(picks(rng, genSrcs, 2)), list(picks(rng, genViaDsts, 2)), list(picks(rng, genIPs, 2)),
			map[bool]string{true: `, "tag:exit"`, false: ""}[rng.IntN(3) == 0])
	}
	self := rng.IntN(4) == 0
	srcPool := genSrcs
	var dsts []string
	if self {
		srcPool = genSelfSrcs[1:] // grants do not allow "*" with autogroup:self
		dsts = append(dsts, `"autogroup:self"`)
	}
	var fields []string
	app := rng.IntN(3) == 0
	for _, d := range picks(rng, genDsts, 2) {
		if app && d == `"autogroup:internet"` {
			continue
		}
		dsts = append(dsts, d)
	}
	if len(dsts) == 0 {
		dsts = append(dsts, `"tag:web"`)
	}
	fields = append(fields, `"src": `+list(picks(rng, srcPool, 2)), `"dst": `+list(dsts))
	if !app || rng.IntN(2) == 0 {
		fields = append(fields, `"ip": `+list(picks(rng, genIPs, 2)))
	}
	if app {
		fields = append(fields, `"app": {`+pick(rng, genApps)+`}`)
	}
	return "{" + strings.Join(fields, ", ") + "}"
}

func genSSH(rng *rand.Rand) string {
	action := pick(rng, []string{"accept", "check"})
	users := list(picks(rng, []string{"root", "autogroup:nonroot", "ubuntu", "localpart:*@example.com"}, 2))
	var src, dst []string
	switch rng.IntN(3) {
	case 0: // tagged sources
		src = picks(rng, []string{"tag:web", "tag:db", "autogroup:tagged"}, 2)
		dst = picks(rng, []string{"tag:web", "tag:db", "tag:router", "autogroup:tagged"}, 2)
	case 1: // one user, may reach its own devices
		u := pick(rng, []string{"alice@", "bob@"})
		src = []string{fmt.Sprintf("%q", u)}
		dst = picks(rng, []string{u, "autogroup:self", "tag:web", "autogroup:member"}, 2)
	default:
		src = picks(rng, []string{"autogroup:member", "group:eng", "group:admins", "alice@", "carol@"}, 2)
		dst = picks(rng, []string{"autogroup:self", "tag:web", "tag:db", "autogroup:member", "autogroup:tagged"}, 2)
	}
	return fmt.Sprintf(`{"action": %q, "src": %s, "dst": %s, "users": %s}`, action, list(src), list(dst), users)
}

// genNode returns a random node with the given ID. Addresses come from a
// small pool so hosts and prefixes in policies match some nodes; a few
// nodes have no address of one family.
func genNode(rng *rand.Rand, id ids.NodeID) Node {
	n := Node{ID: id, Hostname: fmt.Sprintf("n%d", id)}
	if rng.IntN(12) != 0 {
		n.IPv4 = netip.AddrFrom4([4]byte{100, 64, 0, byte(1 + rng.IntN(120))})
	}
	if rng.IntN(12) != 0 {
		n.IPv6 = netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%x", 1+rng.IntN(300)))
	}
	genRetag(rng, &n)
	if rng.IntN(4) == 0 {
		genReroute(rng, &n)
	}
	return n
}

// genRetag gives n a new owner or new tags.
func genRetag(rng *rand.Rand, n *Node) {
	n.Tags = nil
	n.UserID = ids.UserID(1 + rng.IntN(len(genUsers)))
	if rng.IntN(20) == 0 {
		n.UserID = 99 // no such user
	}
	if rng.IntN(3) == 0 {
		n.Tags = []string{pick(rng, genTags)}
		if rng.IntN(4) == 0 {
			if t := pick(rng, genTags); t != n.Tags[0] {
				n.Tags = append(n.Tags, t)
			}
		}
	}
}

// genReroute gives n a new set of approved routes.
func genReroute(rng *rand.Rand, n *Node) {
	n.ApprovedRoutes = nil
	for range rng.IntN(3) {
		n.ApprovedRoutes = append(n.ApprovedRoutes, netip.MustParsePrefix(pick(rng, genRoutes)))
	}
}

// genCase returns a parsed random policy and a random tailnet.
func genCase(rng *rand.Rand, maxNodes int) (string, *Policy, []Node) {
	for {
		src := genPolicy(rng)
		pol, err := Parse([]byte(src))
		if err != nil {
			continue
		}
		var nodes []Node
		used := map[ids.NodeID]bool{}
		idRange := max(40, 3*maxNodes)
		if maxNodes <= 14 {
			idRange = 40
		}
		for range rng.IntN(maxNodes) {
			id := ids.NodeID(1 + rng.IntN(idRange))
			if used[id] {
				continue
			}
			used[id] = true
			nodes = append(nodes, genNode(rng, id))
		}
		return src, pol, nodes
	}
}
