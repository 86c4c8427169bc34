package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/hsctl/headscale/pkg/ids"
)

// User is a tailnet user as the policy sees it. Policy files name users as
// "name@" or by e-mail address, and the groups the identity provider put
// them in as "oidcgroup:<group>".
type User struct {
	ID    ids.UserID
	Name  string
	Email string
	// Groups are the user's groups at the identity provider, as its
	// groups claim named them at the user's last login (matched exactly).
	Groups []string
}

// inIdPGroup reports whether the identity provider put u in group g.
func (u *User) inIdPGroup(g string) bool { return slices.Contains(u.Groups, g) }

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
