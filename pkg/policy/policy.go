// Package policy reads a Tailscale policy file (HuJSON) and compiles it,
// against the current users and nodes, into what each node receives: its
// packet filter, its SSH policy, its node capabilities (nodeAttrs) and the
// set of peers it may see.
//
// Users write Tailscale policy files today; they must work here unchanged
// and give the same packet filters as Tailscale's control plane. The
// output was checked against the captures of Tailscale's control plane
// that Headscale keeps (acl, grant, ssh, routes, nodeAttrs, tests and
// sshTests captures; see TestCompatCaptures). Decisions where Tailscale
// and Headscale differ or the behaviour was unclear:
//
//   - The file is read by walking hujson's syntax tree, whose values carry
//     byte offsets into the original text, so every error names the
//     offending element as line:column (1-based, column in characters)
//     plus its path, e.g. `3:21: acls[0].src[1]: ...`. All problems are
//     reported at once (ErrorList).
//   - Keys are matched case-insensitively, unknown keys and duplicate keys
//     are rejected, and null is the same as an absent key, as in Headscale.
//     ACL entries accept only "src"/"dst": Tailscale's legacy "users" and
//     "ports" are rejected with a hint, as Headscale does. Keys starting
//     with "#" in an ACL entry are ignored (headscale-admin metadata).
//   - Groups contain users only; a group inside a group (so also a cycle)
//     is an error, as in Tailscale and Headscale. Tags may own tags.
//   - A user token is "name@" or an e-mail address: one trailing "@" is
//     stripped and the rest compared with each user's e-mail and name
//     (Headscale v2); "user:*@domain" means every user with an address in
//     domain. A token that matches nobody is ignored with a warning (a
//     group with a deleted user keeps working, Headscale #2967); one that
//     matches several users is a Compile error.
//   - Source "*" becomes the tailnet ranges (100.64.0.0/10 minus the
//     ChromeOS VM range 100.115.92.0/23, and fd7a:115c:a1e0::/48) plus every
//     approved subnet route, as Tailscale and Headscale 0.29 send it. Only
//     autogroup:danger-all (and "no policy") gives SrcIPs ["*"].
//     Destination "*" is sent as {"IP": "*"}.
//   - SrcIPs list every source node address separately, sorted as strings,
//     as Tailscale does (Headscale merges adjacent addresses into ranges;
//     with sequential addresses that changes the wire form, not the
//     meaning). Destinations list the node's own addresses, and a host or
//     prefix as written; autogroup:internet is sent as address ranges.
//   - Rules with identical SrcIPs and IPProto are merged at the position
//     of the first one, over the whole rule list, as Headscale does.
//   - No policy, or a policy with neither "acls" nor "grants", allows
//     everything (SrcIPs ["*"], as Headscale; Tailscale sends its default
//     policy's src "*" ranges instead). "acls": [] or "grants": [] denies
//     everything.
//   - Routes: Node.ApprovedRoutes are optional. With them, subnet routers
//     receive the rules for their subnets, exit nodes the
//     autogroup:internet rules, and "via" grants steer to tagged routers;
//     without them these compile to nothing.
//   - Rejected like Headscale: funnel and ipPool in nodeAttrs, autogroups
//     other than internet, member, tagged, self, nonroot and danger-all,
//     and proto "*".
//
// A Policy is immutable after Parse; a Compiled is immutable after Compile
// (per-node results are computed on first use and cached) and safe for
// concurrent use. When nodes are added, removed or changed (tags, owner,
// addresses, routes), Compiled.Update derives the new compilation from the
// old one at a cost proportional to what the changed nodes touch, with the
// same answers as a full compilation, and says which nodes' view changed
// (Affected). Policy and user changes need a full compilation.
package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/hsctl/headscale/pkg/ids"
)

// User is a tailnet user as the policy sees it. Policy files name users as
// "name@" or by e-mail address.
type User struct {
	ID    ids.UserID
	Name  string
	Email string
}

// Node is a device as the policy sees it. A node with tags is "tagged": it
// is identified by its tags only and its UserID is ignored for rule
// matching.
type Node struct {
	ID       ids.NodeID
	UserID   ids.UserID
	Tags     []string
	IPv4     netip.Addr // may be the zero Addr
	IPv6     netip.Addr // may be the zero Addr
	Hostname string     // informational (sshTests name destinations by it)

	// ApprovedRoutes are the node's approved routes. Subnet routes attract
	// rules whose destinations overlap them (the router enforces the
	// filter for its subnet) and are part of the "*" source; 0.0.0.0/0 or
	// ::/0 make the node an exit node, which receives autogroup:internet
	// rules. Leave it empty until routes are implemented.
	ApprovedRoutes []netip.Prefix
}

// tagged reports whether the node is identified by tags.
func (n *Node) tagged() bool { return len(n.Tags) > 0 }

// Error is one problem found in a policy file, with the position of the
// element it concerns so an operator can find it.
type Error struct {
	Line   int    // 1-based line; 0 when unknown
	Column int    // 1-based column in characters; 0 when unknown
	Path   string // the element, e.g. `acls[3].dst[1]`; may be empty
	Msg    string
}

// Error formats the problem as `line:column: path: reason`.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d: ", e.Line, e.Column)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in a policy file, in file order. Parse
// reports all of them at once so an operator can fix a file in one pass.
type ErrorList []*Error

// Error joins the problems, one per line.
func (l ErrorList) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap lets errors.As find the individual problems.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// source maps byte offsets of the original text to line and column.
type source struct {
	text       []byte
	lineStarts []int
}

func newSource(text []byte) *source {
	s := &source{text: text, lineStarts: []int{0}}
	for i, c := range text {
		if c == '\n' {
			s.lineStarts = append(s.lineStarts, i+1)
		}
	}
	return s
}

// position returns the 1-based line and character column of off.
func (s *source) position(off int) (line, col int) {
	if s == nil || off < 0 {
		return 0, 0
	}
	if off > len(s.text) {
		off = len(s.text)
	}
	i := sort.Search(len(s.lineStarts), func(i int) bool { return s.lineStarts[i] > off }) - 1
	return i + 1, utf8.RuneCount(s.text[s.lineStarts[i]:off]) + 1
}

// newError builds an Error at off (negative: no position).
func (s *source) newError(off int, path, format string, args ...any) *Error {
	line, col := s.position(off)
	return &Error{Line: line, Column: col, Path: path, Msg: fmt.Sprintf(format, args...)}
}
