package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"tailscale.com/tailcfg"
)

// aliasKind says what an alias in a policy file names.
type aliasKind uint8

const (
	kindWildcard  aliasKind = iota + 1 // "*"
	kindUser                           // "name@" or "user@example.com"
	kindGroup                          // "group:x"
	kindTag                            // "tag:x"
	kindHost                           // a name from "hosts"
	kindPrefix                         // an IP address or CIDR
	kindAutogroup                      // "autogroup:x"
	kindIdPGroup                       // "oidcgroup:x": a group from the identity provider
)

// idpGroupPrefix starts an identity-provider group alias: "oidcgroup:"
// followed by the group exactly as the provider's groups claim names it
// (case-sensitive; may hold "@", "/", ":" or spaces). Its own prefix keeps
// it apart from the policy's "group:" definitions: a provider group can
// never add members to a group the policy defines, nor the other way
// round.
const idpGroupPrefix = "oidcgroup:"

// Autogroups Tailscale defines that this server supports.
const (
	agInternet  = "autogroup:internet"
	agMember    = "autogroup:member"
	agTagged    = "autogroup:tagged"
	agSelf      = "autogroup:self"
	agNonRoot   = "autogroup:nonroot"
	agDangerAll = "autogroup:danger-all"
)

var knownAutogroups = []string{agInternet, agMember, agNonRoot, agTagged, agSelf, agDangerAll}

// alias is one parsed reference to a set of nodes or addresses, with the
// place in the file it came from.
type alias struct {
	kind aliasKind
	text string       // as written, trimmed
	pfx  netip.Prefix // kindPrefix (masked); kindHost after lookup
	off  int          // byte offset of the JSON string in the file
	path string       // e.g. acls[0].src[2]
}

// key identifies the alias independently of where it was written.
func (a alias) key() string { return a.text }

func (a alias) is(ag string) bool { return a.kind == kindAutogroup && a.text == ag }

// idpGroup returns the provider group an identity-provider group alias
// names (its text without the prefix).
// Surrounding white space is not part of the name, as it is not in the
// groups stored with users.
func (a alias) idpGroup() string {
	return strings.TrimSpace(strings.TrimPrefix(a.text, idpGroupPrefix))
}

// namesUsers reports whether a names users (and so their untagged nodes):
// a user, a policy group or an identity-provider group.
func (a alias) namesUsers() bool {
	return a.kind == kindUser || a.kind == kindGroup || a.kind == kindIdPGroup
}

// parseAlias classifies s the way Headscale's parser does: an address or
// prefix first, then "*", users (anything with "@"), groups, tags,
// autogroups, and finally host names (no ":" and no "@"). An
// identity-provider group ("oidcgroup:") is recognised before all of
// these, since its name may contain "@" or look like anything else.
func parseAlias(s string) (alias, string) {
	if name, ok := strings.CutPrefix(s, idpGroupPrefix); ok {
		if strings.TrimSpace(name) == "" {
			return alias{}, fmt.Sprintf("%q names no group: write %s<group as the identity provider names it>", s, idpGroupPrefix)
		}
		return alias{kind: kindIdPGroup, text: s}, ""
	}
	if p, ok := parsePrefixOrAddr(s); ok {
		return alias{kind: kindPrefix, text: s, pfx: p}, ""
	}
	switch {
	case s == "*":
		return alias{kind: kindWildcard, text: s}, ""
	case strings.Contains(s, "@"):
		return alias{kind: kindUser, text: s}, ""
	case strings.HasPrefix(s, "group:"):
		return alias{kind: kindGroup, text: s}, ""
	case strings.HasPrefix(s, "tag:"):
		return alias{kind: kindTag, text: s}, ""
	case strings.HasPrefix(s, "autogroup:"):
		for _, ag := range knownAutogroups {
			if s == ag {
				return alias{kind: kindAutogroup, text: s}, ""
			}
		}
		return alias{}, fmt.Sprintf("unknown autogroup %q (supported: %s)", s, strings.Join(knownAutogroups, ", "))
	case s == "":
		return alias{}, "empty alias"
	case !strings.Contains(s, ":"):
		return alias{kind: kindHost, text: s}, ""
	}
	return alias{}, fmt.Sprintf("invalid alias %q", s)
}

// parsePrefixOrAddr parses "1.2.3.4", "fd7a::1" or a CIDR; the result is
// masked.
func parsePrefixOrAddr(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

// splitHostPort splits an ACL destination "alias:ports". Brackets are
// accepted around IPv6 addresses ("[fd7a::1]:22", "[fd7a::1]/128:22").
func splitHostPort(s string) (host, ports, msg string) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return "", "", "square brackets are only valid around IPv6 addresses"
		}
		a, err := netip.ParseAddr(s[1:end])
		if err != nil || !a.Is6() {
			return "", "", "square brackets are only valid around IPv6 addresses"
		}
		rest := s[end+1:]
		if rest == "" || (rest[0] != ':' && rest[0] != '/') {
			return "", "", fmt.Sprintf("invalid destination %q", s)
		}
		s = s[1:end] + rest
	}
	i := strings.LastIndex(s, ":")
	switch {
	case i < 0:
		return "", "", fmt.Sprintf("destination %q must be of the form alias:ports", s)
	case i == 0:
		return "", "", fmt.Sprintf("destination %q has no alias before the port", s)
	case i == len(s)-1:
		return "", "", fmt.Sprintf("destination %q has no port after the colon", s)
	}
	return s[:i], s[i+1:], ""
}

// parsePorts parses "*", "22", "80,443", "1000-2000" (and lists of those).
// A single port 0 is rejected, as Tailscale does ("use * for any port").
func parsePorts(s string) ([]tailcfg.PortRange, string) {
	if s == "*" {
		return []tailcfg.PortRange{tailcfg.PortRangeAny}, ""
	}
	var out []tailcfg.PortRange
	for part := range strings.SplitSeq(s, ",") {
		if lo, hi, ok := strings.Cut(part, "-"); ok {
			first, msg := parsePort(lo)
			if msg != "" {
				return nil, msg
			}
			last, msg := parsePort(hi)
			if msg != "" {
				return nil, msg
			}
			if first > last {
				return nil, fmt.Sprintf("invalid port range %q: first port is greater than last port", part)
			}
			out = append(out, tailcfg.PortRange{First: first, Last: last})
			continue
		}
		if part == "*" {
			out = append(out, tailcfg.PortRangeAny)
			continue
		}
		p, msg := parsePort(part)
		if msg != "" {
			return nil, msg
		}
		if p == 0 {
			return nil, "port must be >0, or use '*' for any port"
		}
		out = append(out, tailcfg.PortRange{First: p, Last: p})
	}
	return out, ""
}

func parsePort(s string) (uint16, string) {
	if s == "" {
		return 0, "invalid port range format"
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Sprintf("invalid port %q", s)
	}
	if n < 0 || n > 65535 {
		return 0, fmt.Sprintf("port %d out of range 0-65535", n)
	}
	return uint16(n), ""
}

// protocol is a parsed "proto" value. name is canonical ("" = unset, the
// client's default set TCP+UDP+ICMP+ICMPv6); nums is what FilterRule.IPProto
// carries (nil for unset).
type protocol struct {
	name string
	nums []int
}

// protocolNames are the names Headscale (and Tailscale) accept, with their
// IANA numbers. "icmp" is ICMPv4 only; use "ipv6-icmp" or 58 for ICMPv6.
var protocolNames = map[string]int{
	"icmp":      1,
	"igmp":      2,
	"ipv4":      4,
	"ip-in-ip":  4,
	"tcp":       6,
	"egp":       8,
	"igp":       9,
	"udp":       17,
	"gre":       47,
	"esp":       50,
	"ah":        51,
	"ipv6-icmp": 58,
	"sctp":      132,
	"fc":        133,
}

// parseProtocol parses a proto value: a name (case-insensitive) or an IANA
// number 1-255 without leading zeros. "*" is rejected as Tailscale does.
func parseProtocol(s string) (protocol, string) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return protocol{}, ""
	}
	if n, ok := protocolNames[s]; ok {
		return protocol{name: s, nums: []int{n}}, ""
	}
	if s == "*" {
		return protocol{}, `proto name "*" not known; use protocol number 0-255 or protocol name (icmp, tcp, udp, etc.)`
	}
	if s == "0" || s[0] == '0' {
		return protocol{}, fmt.Sprintf("leading 0 not permitted in protocol number: %q", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return protocol{}, fmt.Sprintf("invalid protocol %q: must be a known protocol name or a protocol number 0-255", s)
	}
	if n < 0 || n > 255 {
		return protocol{}, fmt.Sprintf("protocol number out of range (0-255): %d", n)
	}
	for name, num := range protocolNames {
		if num == n && name != "ip-in-ip" {
			return protocol{name: name, nums: []int{n}}, ""
		}
	}
	return protocol{name: s, nums: []int{n}}, ""
}

// allowsPorts reports whether the protocol has ports (only TCP, UDP, SCTP
// and the default set do; others accept only "*").
func (p protocol) allowsPorts() bool {
	switch p.name {
	case "", "tcp", "udp", "sctp":
		return true
	}
	return false
}

// isAnyPort reports whether ports is exactly "*".
func isAnyPort(ports []tailcfg.PortRange) bool {
	for _, pr := range ports {
		if pr != tailcfg.PortRangeAny {
			return false
		}
	}
	return true
}
