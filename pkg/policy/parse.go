package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tailscale/hujson"
	"tailscale.com/tailcfg"
)

// Policy is a parsed and validated policy file. It is immutable; compile
// it against users and nodes with Compile.
type Policy struct {
	src *source

	hasACLs   bool // "acls" present (even empty): no implicit allow-all
	hasGrants bool // "grants" present (even empty)

	groups    map[string][]alias // group -> users
	idpGroups map[string]bool    // identity-provider groups named anywhere
	hosts     map[string]netip.Prefix
	tagOwners map[string][]alias // tag -> users, groups, tags

	grants    []grant // "grants" first, then "acls" desugared, as Headscale does
	ssh       []sshRule
	nodeAttrs []nodeAttr
	routes    []routeApprover
	exitNode  []alias
	tests     []aclTest
	sshTests  []sshTest

	randomizeClientPort bool
}

func (p *Policy) noteIdPGroup(g string) {
	if p.idpGroups == nil {
		p.idpGroups = map[string]bool{}
	}
	p.idpGroups[g] = true
}

// NamesIdPGroup reports whether the policy names any of groups as an
// identity-provider group ("oidcgroup:<group>"), anywhere. When a user's
// provider groups change, only a change to a group the policy names can
// change what the policy gives anyone.
func (p *Policy) NamesIdPGroup(groups ...string) bool {
	if p == nil {
		return false
	}
	for _, g := range groups {
		if p.idpGroups[g] {
			return true
		}
	}
	return false
}

// ipSpec is one "proto:ports" element of a grant's "ip" (or the proto and
// ports of an ACL destination).
type ipSpec struct {
	proto protocol
	ports []tailcfg.PortRange
}

// grant is a grant, or one destination of an ACL (ACLs are desugared into
// grants).
type grant struct {
	src  []alias
	dst  []alias
	ip   []ipSpec
	app  tailcfg.PeerCapMap
	via  []alias
	path string
}

type checkPeriod struct {
	always bool
	d      time.Duration
}

type sshRule struct {
	check     bool
	src       []alias
	dst       []alias
	users     []string
	period    *checkPeriod
	acceptEnv []string
	path      string
}

type nodeAttr struct {
	targets []alias
	attrs   []string
}

type routeApprover struct {
	prefix netip.Prefix
	owners []alias
}

type strAt struct {
	s    string
	off  int
	path string
}

type aclTest struct {
	src    alias
	srcStr string
	proto  protocol
	accept []strAt
	deny   []strAt
	off    int
	path   string
}

type sshTest struct {
	src    alias
	dst    []alias
	accept []strAt
	deny   []strAt
	check  []strAt
	off    int
	path   string
}

// parser walks the HuJSON syntax tree; every value carries its byte
// offset in the original text, so errors point at the offending element.
type parser struct {
	src  *source
	errs ErrorList
	pol  *Policy
}

func (p *parser) errorf(off int, path, format string, args ...any) {
	p.errs = append(p.errs, p.src.newError(off, path, format, args...))
}

// (?s): the quoted offending text may hold a newline.
var hujsonErrRE = regexp.MustCompile(`(?s)^hujson: line (\d+), column (\d+): (.*)$`)

// Parse reads a policy file: HuJSON (comments and trailing commas allowed),
// unknown keys rejected, every reference checked. An empty (or
// whitespace-only) file is "no policy" and yields a nil *Policy, which
// Compile treats as allow-all. Errors are an *Error (syntax) or an
// ErrorList (one entry per problem), each with line:column.
func Parse(src []byte) (*Policy, error) {
	s := newSource(src)
	if strings.TrimSpace(string(src)) == "" {
		return nil, nil
	}
	root, err := hujson.Parse(src)
	if err != nil {
		return nil, hujsonError(s, err)
	}
	p := &parser{src: s, pol: &Policy{src: s}}
	p.parseTop(&root)
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool {
			a, b := p.errs[i], p.errs[j]
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Column < b.Column
		})
		return nil, p.errs
	}
	return p.pol, nil
}

// hujsonError turns hujson's "line L, column C" (byte column) into an
// *Error with a character column.
func hujsonError(s *source, err error) error {
	m := hujsonErrRE.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{Msg: "parse policy: " + err.Error()}
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	off := len(s.text)
	if line-1 < len(s.lineStarts) {
		off = min(s.lineStarts[line-1]+col-1, len(s.text))
	}
	l, c := s.position(off)
	return &Error{Line: l, Column: c, Msg: "parsing HuJSON: " + m[3]}
}

// member is one key of a JSON object.
type member struct {
	name    string
	nameOff int
	val     *hujson.Value
	path    string
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func isNull(v *hujson.Value) bool {
	lit, ok := v.Value.(hujson.Literal)
	return ok && lit.Kind() == 'n'
}

// object returns the members of an object value; mapStyle paths render
// keys as path["key"].
func (p *parser) object(v *hujson.Value, path string, mapStyle bool) ([]member, bool) {
	obj, ok := v.Value.(*hujson.Object)
	if !ok {
		p.errorf(v.StartOffset, path, "expected an object")
		return nil, false
	}
	out := make([]member, 0, len(obj.Members))
	seen := make(map[string]bool, len(obj.Members))
	for i := range obj.Members {
		m := &obj.Members[i]
		name := m.Name.Value.(hujson.Literal).String()
		mp := joinPath(path, name)
		if mapStyle {
			mp = fmt.Sprintf("%s[%q]", path, name)
		}
		fold := strings.ToLower(name)
		if !mapStyle {
			name = fold
		} else {
			fold = name
		}
		if seen[fold] {
			p.errorf(m.Name.StartOffset, mp, "duplicate key %q", m.Name.Value.(hujson.Literal).String())
			continue
		}
		seen[fold] = true
		out = append(out, member{name: name, nameOff: m.Name.StartOffset, val: &m.Value, path: mp})
	}
	return out, true
}

// fields dispatches an object's keys (matched case-insensitively) to
// handlers; unknown keys are errors.
func (p *parser) fields(v *hujson.Value, path string, hint map[string]string, fs map[string]func(m member)) bool {
	ms, ok := p.object(v, path, false)
	if !ok {
		return false
	}
	for _, m := range ms {
		if f, ok := fs[m.name]; ok {
			if !isNull(m.val) { // null is the same as absent
				f(m)
			}
			continue
		}
		if strings.HasPrefix(m.name, "#") && hint != nil {
			continue // metadata keys in ACL entries (headscale-admin)
		}
		msg := fmt.Sprintf("unknown field %q", nameAt(p.src, m.nameOff))
		if h, ok := hint[m.name]; ok {
			msg += "; " + h
		}
		p.errorf(m.nameOff, m.path, "%s", msg)
	}
	return true
}

// nameAt returns the object key starting at off, as written.
func nameAt(s *source, off int) string {
	var name string
	if v, err := hujson.Parse(keyBytes(s.text[off:])); err == nil {
		name = v.Value.(hujson.Literal).String()
	}
	return name
}

// keyBytes returns the JSON string literal at the start of b.
func keyBytes(b []byte) []byte {
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return b[:i+1]
		}
	}
	return b
}

func (p *parser) str(v *hujson.Value, path string) (string, bool) {
	lit, ok := v.Value.(hujson.Literal)
	if !ok || lit.Kind() != '"' {
		p.errorf(v.StartOffset, path, "expected a string")
		return "", false
	}
	return lit.String(), true
}

func (p *parser) boolean(v *hujson.Value, path string) bool {
	lit, ok := v.Value.(hujson.Literal)
	if !ok || (lit.Kind() != 't' && lit.Kind() != 'f') {
		p.errorf(v.StartOffset, path, "expected true or false")
		return false
	}
	return lit.Bool()
}

// array returns the elements of an array value (null is an empty array).
func (p *parser) array(v *hujson.Value, path string) ([]*hujson.Value, bool) {
	if isNull(v) {
		return nil, true
	}
	arr, ok := v.Value.(*hujson.Array)
	if !ok {
		p.errorf(v.StartOffset, path, "expected an array")
		return nil, false
	}
	out := make([]*hujson.Value, len(arr.Elements))
	for i := range arr.Elements {
		out[i] = &arr.Elements[i]
	}
	return out, true
}

// strs reads an array of strings, trimming surrounding whitespace as
// Tailscale does.
func (p *parser) strs(v *hujson.Value, path string) []strAt {
	els, _ := p.array(v, path)
	out := make([]strAt, 0, len(els))
	for i, e := range els {
		ep := fmt.Sprintf("%s[%d]", path, i)
		if s, ok := p.str(e, ep); ok {
			out = append(out, strAt{s: strings.TrimSpace(s), off: e.StartOffset, path: ep})
		}
	}
	return out
}

// aliasList reads an array of aliases, checking each for the context.
func (p *parser) aliasList(v *hujson.Value, path string, ctx aliasCtx) []alias {
	var out []alias
	for _, s := range p.strs(v, path) {
		if a, ok := p.alias(s, ctx); ok {
			out = append(out, a)
		}
	}
	return out
}

// alias parses one alias and checks it is allowed and defined where it
// is used.
func (p *parser) alias(s strAt, ctx aliasCtx) (alias, bool) {
	a, msg := parseAlias(s.s)
	if msg != "" {
		p.errorf(s.off, s.path, "%s", msg)
		return alias{}, false
	}
	a.off, a.path = s.off, s.path
	if msg := p.checkAlias(&a, ctx); msg != "" {
		p.errorf(s.off, s.path, "%s", msg)
		return alias{}, false
	}
	return a, true
}

// aliasCtx is where an alias is used; each place allows different kinds.
type aliasCtx uint8

const (
	ctxSrc aliasCtx = iota + 1 // acls/grants src, tests src
	ctxDst                     // acls/grants dst
	ctxSSHSrc
	ctxSSHDst
	ctxNodeAttr
	ctxOwner    // tagOwners and autoApprovers values
	ctxTestDst  // tests accept/deny
	ctxSSHTestD // sshTests dst
)

var (
	srcAutogroups      = []string{agMember, agTagged, agDangerAll}
	dstAutogroups      = []string{agInternet, agMember, agTagged, agSelf}
	sshSrcAutogroups   = []string{agMember, agTagged}
	sshDstAutogroups   = []string{agMember, agTagged, agSelf}
	nodeAttrAutogroups = []string{agMember, agTagged}
)

// checkAlias returns why a is not allowed in ctx ("" if it is); for hosts
// it fills in the prefix.
func (p *parser) checkAlias(a *alias, ctx aliasCtx) string {
	pol := p.pol
	switch a.kind {
	case kindHost:
		switch ctx {
		case ctxSSHSrc:
			return fmt.Sprintf("host %q not supported as an SSH source", a.text)
		case ctxSSHDst:
			return fmt.Sprintf("invalid dst %q: hosts are not allowed as SSH destinations", a.text)
		case ctxOwner:
			return fmt.Sprintf("invalid owner %q", a.text)
		}
		pfx, ok := pol.hosts[a.text]
		if !ok {
			return fmt.Sprintf("host %q not defined in policy", a.text)
		}
		a.pfx = pfx
	case kindGroup:
		if _, ok := pol.groups[a.text]; !ok {
			return fmt.Sprintf("group %q not defined in policy", a.text)
		}
	case kindIdPGroup:
		// Valid everywhere a group is; a group no user has (yet) names
		// nobody.
		pol.noteIdPGroup(a.idpGroup())
	case kindTag:
		if _, ok := pol.tagOwners[a.text]; !ok {
			return fmt.Sprintf("tag %q not found in tagOwners", a.text)
		}
	case kindWildcard:
		switch ctx {
		case ctxSSHSrc:
			return `"*" not supported as an SSH source; use autogroup:member or autogroup:tagged`
		case ctxSSHDst:
			return "wildcard (*) is not supported as SSH destination; use 'autogroup:member' for user-owned devices, 'autogroup:tagged' for tagged devices, or specific tags/users"
		case ctxOwner:
			return `invalid owner "*"`
		}
	case kindPrefix:
		switch ctx {
		case ctxSSHSrc, ctxSSHDst:
			return fmt.Sprintf("IP address or prefix %q not supported in SSH rules", a.text)
		case ctxOwner:
			return fmt.Sprintf("invalid owner %q", a.text)
		}
	case kindAutogroup:
		var allowed []string
		switch ctx {
		case ctxSrc:
			switch a.text {
			case agInternet:
				return "autogroup:internet can only be used in ACL destinations"
			case agSelf:
				return `"autogroup:self" not valid on the src side of a rule`
			}
			allowed = srcAutogroups
		case ctxDst:
			if a.text == agDangerAll {
				return "cannot use autogroup:danger-all as a dst"
			}
			allowed = dstAutogroups
		case ctxSSHSrc:
			allowed = sshSrcAutogroups
		case ctxSSHDst, ctxSSHTestD:
			allowed = sshDstAutogroups
		case ctxNodeAttr:
			allowed = nodeAttrAutogroups
		case ctxTestDst:
			allowed = dstAutogroups
		case ctxOwner:
			return fmt.Sprintf("invalid owner %q", a.text)
		}
		if !slices.Contains(allowed, a.text) {
			return fmt.Sprintf("%s is not allowed here (allowed: %s)", a.text, strings.Join(allowed, ", "))
		}
	}
	return ""
}

// sectionOrder parses definitions before the rules that refer to them.
var sectionOrder = []string{"groups", "hosts", "tagowners"}

func (p *parser) parseTop(root *hujson.Value) {
	ms, ok := p.object(root, "", false)
	if !ok {
		return
	}
	byName := map[string]member{}
	for _, m := range ms {
		byName[m.name] = m
	}
	handlers := map[string]func(m member){
		"groups":              p.parseGroups,
		"hosts":               p.parseHosts,
		"tagowners":           p.parseTagOwners,
		"acls":                p.parseACLs,
		"grants":              p.parseGrants,
		"ssh":                 p.parseSSH,
		"nodeattrs":           p.parseNodeAttrs,
		"autoapprovers":       p.parseAutoApprovers,
		"tests":               p.parseTests,
		"sshtests":            p.parseSSHTests,
		"randomizeclientport": func(m member) { p.pol.randomizeClientPort = p.boolean(m.val, m.path) },
	}
	for _, name := range sectionOrder {
		if m, ok := byName[name]; ok && !isNull(m.val) {
			handlers[name](m)
		}
	}
	// grants before acls, as Headscale orders them.
	for _, name := range []string{"grants", "acls"} {
		if m, ok := byName[name]; ok && !isNull(m.val) {
			handlers[name](m)
		}
	}
	for _, m := range ms {
		if slices.Contains(sectionOrder, m.name) || m.name == "grants" || m.name == "acls" {
			continue
		}
		h, ok := handlers[m.name]
		if !ok {
			p.errorf(m.nameOff, m.path, "unknown field %q", nameAt(p.src, m.nameOff))
			continue
		}
		if !isNull(m.val) {
			h(m)
		}
	}
}

func (p *parser) parseGroups(m member) {
	ms, ok := p.object(m.val, "groups", true)
	if !ok {
		return
	}
	p.pol.groups = make(map[string][]alias, len(ms))
	for _, g := range ms {
		if !strings.HasPrefix(g.name, "group:") || len(g.name) == len("group:") {
			p.errorf(g.nameOff, g.path, "group name %q must start with 'group:'", g.name)
			continue
		}
		var users []alias
		if arr, ok := g.val.Value.(*hujson.Array); !ok && !isNull(g.val) {
			p.errorf(g.val.StartOffset, g.path, "group %q must be an array of users", g.name)
		} else if arr != nil {
			for _, s := range p.strs(g.val, g.path) {
				switch {
				case strings.HasPrefix(s.s, idpGroupPrefix):
					// A group may include everyone the identity
					// provider puts in a group.
					if a, msg := parseAlias(s.s); msg != "" {
						p.errorf(s.off, s.path, "%s", msg)
					} else {
						a.off, a.path = s.off, s.path
						p.pol.noteIdPGroup(a.idpGroup())
						users = append(users, a)
					}
				case strings.HasPrefix(s.s, "group:"):
					p.errorf(s.off, s.path, "group %q contains group %q: group members cannot be recursive", g.name, s.s)
				case !strings.Contains(s.s, "@"):
					p.errorf(s.off, s.path, "group member %q must be a user (name@ or e-mail address)", s.s)
				default:
					users = append(users, alias{kind: kindUser, text: s.s, off: s.off, path: s.path})
				}
			}
		}
		p.pol.groups[g.name] = users
	}
}

func (p *parser) parseHosts(m member) {
	ms, ok := p.object(m.val, "hosts", true)
	if !ok {
		return
	}
	p.pol.hosts = make(map[string]netip.Prefix, len(ms))
	for _, h := range ms {
		if h.name == "" || strings.ContainsAny(h.name, "@:") || h.name == "*" {
			p.errorf(h.nameOff, h.path, "invalid host name %q", h.name)
			continue
		}
		s, ok := p.str(h.val, h.path)
		if !ok {
			continue
		}
		pfx, ok := parsePrefixOrAddr(strings.TrimSpace(s))
		if !ok {
			p.errorf(h.val.StartOffset, h.path, "host %q: invalid IP address or prefix %q", h.name, s)
			continue
		}
		p.pol.hosts[h.name] = pfx
	}
}

func validTagName(t string) bool {
	rest, ok := strings.CutPrefix(t, "tag:")
	if !ok || rest == "" {
		return false
	}
	c := rest[0]
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func (p *parser) parseTagOwners(m member) {
	ms, ok := p.object(m.val, "tagOwners", true)
	if !ok {
		return
	}
	p.pol.tagOwners = make(map[string][]alias, len(ms))
	// Register every tag first so owners may name tags defined later.
	for _, t := range ms {
		if validTagName(t.name) {
			p.pol.tagOwners[t.name] = nil
		}
	}
	for _, t := range ms {
		if !validTagName(t.name) {
			p.errorf(t.nameOff, t.path, "invalid tag %q: tag names must start with 'tag:' followed by a letter", t.name)
			continue
		}
		var owners []alias
		for _, s := range p.strs(t.val, t.path) {
			if a, ok := p.owner(s); ok {
				owners = append(owners, a)
			}
		}
		p.pol.tagOwners[t.name] = owners
	}
}

// owner parses a tagOwners / autoApprovers entry: a user, group or tag.
func (p *parser) owner(s strAt) (alias, bool) {
	a, msg := parseAlias(s.s)
	if msg == "" && !a.namesUsers() && a.kind != kindTag {
		msg = fmt.Sprintf("invalid owner %q: must be a user, group, %s group or tag", s.s, idpGroupPrefix)
	}
	if msg != "" {
		p.errorf(s.off, s.path, "%s", msg)
		return alias{}, false
	}
	a.off, a.path = s.off, s.path
	if msg := p.checkAlias(&a, ctxOwner); msg != "" {
		p.errorf(s.off, s.path, "%s", msg)
		return alias{}, false
	}
	return a, true
}

var aclHints = map[string]string{
	"users": `Tailscale's legacy spelling; use "src"`,
	"ports": `Tailscale's legacy spelling; use "dst"`,
}

func (p *parser) parseACLs(m member) {
	p.pol.hasACLs = true
	els, _ := p.array(m.val, "acls")
	for i, e := range els {
		path := fmt.Sprintf("acls[%d]", i)
		var (
			action    string
			actionSet bool
			srcs      []alias
			dsts      []struct {
				a     alias
				ports []tailcfg.PortRange
			}
			proto    protocol
			protoOff = -1
		)
		ok := p.fields(e, path, aclHints, map[string]func(member){
			"action": func(f member) {
				if s, ok := p.str(f.val, f.path); ok {
					actionSet = true
					action = s
					if s != "accept" {
						p.errorf(f.val.StartOffset, f.path, "action=%q is not supported: only \"accept\" is", s)
					}
				}
			},
			"src": func(f member) { srcs = p.aliasList(f.val, f.path, ctxSrc) },
			"dst": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					host, ports, msg := splitHostPort(s.s)
					if msg != "" {
						p.errorf(s.off, s.path, "%s", msg)
						continue
					}
					pr, msg := parsePorts(ports)
					if msg != "" {
						p.errorf(s.off, s.path, "dst=%q: port range %q: %s", s.s, ports, msg)
						continue
					}
					a, ok := p.alias(strAt{s: host, off: s.off, path: s.path}, ctxDst)
					if !ok {
						continue
					}
					dsts = append(dsts, struct {
						a     alias
						ports []tailcfg.PortRange
					}{a, pr})
				}
			},
			"proto": func(f member) {
				protoOff = f.val.StartOffset
				s, ok := literalText(f.val)
				if !ok {
					p.errorf(f.val.StartOffset, f.path, "expected a protocol name or number")
					return
				}
				pr, msg := parseProtocol(s)
				if msg != "" {
					p.errorf(f.val.StartOffset, f.path, "%s", msg)
					return
				}
				proto = pr
			},
		})
		if !ok {
			continue
		}
		if !actionSet {
			p.errorf(e.StartOffset, path, `action must be specified ("accept")`)
		} else if action != "accept" {
			continue
		}
		if !proto.allowsPorts() {
			for _, d := range dsts {
				if !isAnyPort(d.ports) {
					p.errorf(protoOff, path+".proto", "protocol %q does not support specific ports; only \"*\" is allowed", proto.name)
					break
				}
			}
		}
		hasSelf, hasOther := false, false
		for _, d := range dsts {
			if d.a.is(agSelf) {
				hasSelf = true
			} else if d.a.kind != kindAutogroup {
				hasOther = true
			}
		}
		if hasSelf {
			for _, s := range srcs {
				if !selfSourceOK(s, true) {
					p.errorf(s.off, s.path, "autogroup:self can only be used with users, groups, or supported autogroups (got %q)", s.text)
				}
			}
		}
		// Desugar into one grant per destination. When the ACL has
		// destinations other than autogroups, Tailscale emits the
		// non-self rules first and the autogroup:self ones after.
		emit := func(self bool) {
			for _, d := range dsts {
				if hasOther && d.a.is(agSelf) != self {
					continue
				}
				p.pol.grants = append(p.pol.grants, grant{
					src:  srcs,
					dst:  []alias{d.a},
					ip:   []ipSpec{{proto: proto, ports: d.ports}},
					path: path,
				})
			}
		}
		emit(false)
		if hasOther {
			emit(true)
		}
	}
}

// literalText returns a string literal's value or a number's text.
func literalText(v *hujson.Value) (string, bool) {
	lit, ok := v.Value.(hujson.Literal)
	if !ok {
		return "", false
	}
	switch lit.Kind() {
	case '"':
		return lit.String(), true
	case '0':
		return string(lit), true
	}
	return "", false
}

// selfSourceOK reports whether a may be a source of a rule whose
// destination is autogroup:self. ACLs also allow "*" (narrowed per node);
// grants do not, as Tailscale rejects it.
func selfSourceOK(a alias, acl bool) bool {
	switch a.kind {
	case kindUser, kindGroup, kindIdPGroup:
		return true
	case kindWildcard:
		return acl
	case kindAutogroup:
		return a.text == agMember
	}
	return false
}

// Capability names users may grant in the tailscale.com domain.
var tailscaleCapAllowlist = map[string]bool{
	string(tailcfg.PeerCapabilityTaildrive):  true,
	string(tailcfg.PeerCapabilityRelay):      true,
	string(tailcfg.PeerCapabilityWebUI):      true,
	string(tailcfg.PeerCapabilityKubernetes): true,
	string(tailcfg.PeerCapabilityTsIDP):      true,
	"tailscale.com/cap/secrets":              true,
}

func (p *parser) parseGrants(m member) {
	p.pol.hasGrants = true
	els, _ := p.array(m.val, "grants")
	for i, e := range els {
		path := fmt.Sprintf("grants[%d]", i)
		g := grant{path: path}
		var srcSet, dstSet bool
		ok := p.fields(e, path, nil, map[string]func(member){
			"src": func(f member) { srcSet = true; g.src = p.aliasList(f.val, f.path, ctxSrc) },
			"dst": func(f member) {
				dstSet = true
				g.dst = p.aliasList(f.val, f.path, ctxDst)
				for _, d := range g.dst {
					if d.kind == kindPrefix && d.pfx.Bits() == 0 {
						p.errorf(d.off, d.path, "dst %q: to allow all IP addresses, use \"*\" or \"autogroup:internet\"", d.text)
					}
				}
			},
			"ip": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					spec, msg := parseIPSpec(s.s)
					if msg != "" {
						p.errorf(s.off, s.path, "%s", msg)
						continue
					}
					g.ip = append(g.ip, spec)
				}
			},
			"app": func(f member) { g.app = p.parseApp(f) },
			"via": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					if !strings.HasPrefix(s.s, "tag:") {
						p.errorf(s.off, s.path, "via can only be a tag (got %q)", s.s)
						continue
					}
					if _, ok := p.pol.tagOwners[s.s]; !ok {
						p.errorf(s.off, s.path, "tag %q not found", s.s)
						continue
					}
					g.via = append(g.via, alias{kind: kindTag, text: s.s, off: s.off, path: s.path})
				}
			},
		})
		if !ok {
			continue
		}
		if !srcSet {
			p.errorf(e.StartOffset, path, `"src" must be specified`)
		}
		if !dstSet {
			p.errorf(e.StartOffset, path, `"dst" must be specified`)
		}
		if len(g.ip) == 0 && len(g.app) == 0 {
			p.errorf(e.StartOffset, path, "ip and app can not both be empty")
		}
		if len(g.app) > 0 {
			for _, d := range g.dst {
				if d.is(agInternet) {
					p.errorf(d.off, d.path, "cannot use app grants with autogroup:internet")
				}
			}
		}
		if slices.ContainsFunc(g.dst, func(a alias) bool { return a.is(agSelf) }) {
			for _, s := range g.src {
				if !selfSourceOK(s, false) {
					p.errorf(s.off, s.path, "autogroup:self can only be used with users, groups, or supported autogroups (got %q)", s.text)
				}
			}
		}
		p.pol.grants = append(p.pol.grants, g)
	}
}

// parseIPSpec parses a grant "ip" element: "*", "22", "tcp:443",
// "udp:1000-2000", "icmp:*".
func parseIPSpec(s string) (ipSpec, string) {
	if s == "*" {
		return ipSpec{ports: []tailcfg.PortRange{tailcfg.PortRangeAny}}, ""
	}
	protoPart, portPart, hasProto := strings.Cut(s, ":")
	if !hasProto {
		ports, msg := parsePorts(s)
		if msg != "" {
			return ipSpec{}, fmt.Sprintf("port range %q: %s", s, msg)
		}
		return ipSpec{ports: ports}, ""
	}
	if strings.Contains(portPart, ":") {
		return ipSpec{}, fmt.Sprintf("%q: expected only one colon in Internet protocol and port type", s)
	}
	proto, msg := parseProtocol(protoPart)
	if msg != "" {
		return ipSpec{}, msg
	}
	ports, msg := parsePorts(portPart)
	if msg != "" {
		return ipSpec{}, fmt.Sprintf("port range %q: %s", portPart, msg)
	}
	if !proto.allowsPorts() && !isAnyPort(ports) {
		return ipSpec{}, fmt.Sprintf("protocol %q does not support specific ports; only \"*\" is allowed", proto.name)
	}
	return ipSpec{proto: proto, ports: ports}, ""
}

// parseApp reads a grant's "app": capability name -> array of JSON values
// (kept verbatim, minimised, as tailcfg.RawMessage).
func (p *parser) parseApp(f member) tailcfg.PeerCapMap {
	ms, ok := p.object(f.val, f.path, true)
	if !ok {
		return nil
	}
	out := make(tailcfg.PeerCapMap, len(ms))
	for _, c := range ms {
		name := c.name
		switch {
		case strings.Contains(name, "://") || !strings.Contains(name, "/"):
			p.errorf(c.nameOff, c.path, "capability name %q must have the form {domain}/{path}", name)
			continue
		case strings.HasPrefix(name, "tailscale.com/") && !tailscaleCapAllowlist[name]:
			p.errorf(c.nameOff, c.path, "capability name %q must not be in the tailscale.com domain", name)
			continue
		}
		els, ok := p.array(c.val, c.path)
		if !ok {
			continue
		}
		vals := make([]tailcfg.RawMessage, 0, len(els))
		for _, e := range els {
			v := e.Clone()
			v.Minimize()
			vals = append(vals, tailcfg.RawMessage(v.Pack()))
		}
		out[tailcfg.PeerCapability(name)] = vals
	}
	return out
}

// sshCheckPeriodMax is the longest checkPeriod Tailscale accepts.
const sshCheckPeriodMax = 7 * 24 * time.Hour

func (p *parser) parseSSH(m member) {
	els, _ := p.array(m.val, "ssh")
	for i, e := range els {
		path := fmt.Sprintf("ssh[%d]", i)
		r := sshRule{path: path}
		var action string
		var usersSet bool
		periodOff := -1
		ok := p.fields(e, path, nil, map[string]func(member){
			"action": func(f member) {
				if s, ok := p.str(f.val, f.path); ok {
					action = strings.TrimSpace(s)
					switch action {
					case "accept", "check":
					case "":
						p.errorf(f.val.StartOffset, f.path, "action must be specified")
					default:
						p.errorf(f.val.StartOffset, f.path, "%q is not a valid action (accept or check)", action)
					}
				}
			},
			"src": func(f member) { r.src = p.aliasList(f.val, f.path, ctxSSHSrc) },
			"dst": func(f member) { r.dst = p.aliasList(f.val, f.path, ctxSSHDst) },
			"users": func(f member) {
				usersSet = true
				for _, s := range p.strs(f.val, f.path) {
					if s.s == "" || s.s == "*" {
						p.errorf(s.off, s.path, "user %q is not valid", s.s)
						continue
					}
					r.users = append(r.users, s.s)
				}
			},
			"checkperiod": func(f member) {
				periodOff = f.val.StartOffset
				s, ok := p.str(f.val, f.path)
				if !ok {
					return
				}
				if s == "always" {
					r.period = &checkPeriod{always: true}
					return
				}
				d, err := time.ParseDuration(s)
				switch {
				case err != nil:
					p.errorf(f.val.StartOffset, f.path, "invalid checkPeriod %q", s)
				case d < 0:
					p.errorf(f.val.StartOffset, f.path, "checkPeriod %s must be a positive duration", d)
				case d > sshCheckPeriodMax:
					p.errorf(f.val.StartOffset, f.path, "checkPeriod %s is above the max (168h)", d)
				default:
					r.period = &checkPeriod{d: d}
				}
			},
			"acceptenv": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					if s.s == "" {
						p.errorf(s.off, s.path, "acceptEnv values cannot be empty")
						continue
					}
					r.acceptEnv = append(r.acceptEnv, s.s)
				}
			},
		})
		if !ok {
			continue
		}
		if action == "" {
			p.errorf(e.StartOffset, path, "action must be specified")
		}
		r.check = action == "check"
		if !usersSet || len(r.users) == 0 {
			p.errorf(e.StartOffset, path, "users must be specified")
		}
		if periodOff >= 0 && action != "check" {
			p.errorf(periodOff, path+".checkPeriod", `checkPeriod is only valid with action "check"`)
		}
		p.checkSSHCombination(&r)
		p.pol.ssh = append(p.pol.ssh, r)
	}
}

// checkSSHCombination enforces Tailscale's SSH safety rules: tagged
// sources cannot reach user-owned devices, a user destination needs that
// same user (only) as source, and autogroup:self needs user sources.
func (p *parser) checkSSHCombination(r *sshRule) {
	taggedSrc, groupSrc := false, false
	users := map[string]bool{}
	for _, s := range r.src {
		switch {
		case s.kind == kindTag || s.is(agTagged):
			taggedSrc = true
		case s.kind == kindGroup || s.kind == kindIdPGroup || s.is(agMember):
			groupSrc = true
		case s.kind == kindUser:
			users[s.text] = true
		}
	}
	for _, d := range r.dst {
		switch {
		case d.kind == kindUser:
			if taggedSrc {
				p.errorf(d.off, d.path, "tags in SSH source cannot access user-owned devices (%s); use autogroup:tagged or specific tags as destinations instead", d.text)
			} else if groupSrc || len(users) != 1 || !users[d.text] {
				p.errorf(d.off, d.path, "user destination requires source to contain only that same user %q; use autogroup:self instead for same-user SSH access", d.text)
			}
		case d.is(agSelf) && taggedSrc:
			p.errorf(d.off, d.path, "autogroup:self destination requires source to contain only users or groups, not tags or autogroup:tagged")
		case d.is(agMember) && taggedSrc:
			p.errorf(d.off, d.path, "tags in SSH source cannot access autogroup:member (user-owned devices)")
		}
	}
}

func (p *parser) parseNodeAttrs(m member) {
	els, _ := p.array(m.val, "nodeAttrs")
	for i, e := range els {
		path := fmt.Sprintf("nodeAttrs[%d]", i)
		var na nodeAttr
		p.fields(e, path, nil, map[string]func(member){
			"target": func(f member) { na.targets = p.aliasList(f.val, f.path, ctxNodeAttr) },
			"attr": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					if s.s == string(tailcfg.NodeAttrFunnel) {
						p.errorf(s.off, s.path, "nodeAttrs attr %q is not supported by this server", s.s)
						continue
					}
					if s.s == "" {
						p.errorf(s.off, s.path, "empty attr")
						continue
					}
					na.attrs = append(na.attrs, s.s)
				}
			},
			"ippool": func(f member) {
				p.errorf(f.val.StartOffset, f.path, "nodeAttrs ipPool is not supported by this server")
			},
		})
		p.pol.nodeAttrs = append(p.pol.nodeAttrs, na)
	}
}

func (p *parser) parseAutoApprovers(m member) {
	p.fields(m.val, "autoApprovers", nil, map[string]func(member){
		"routes": func(f member) {
			ms, ok := p.object(f.val, f.path, true)
			if !ok {
				return
			}
			for _, r := range ms {
				pfx, err := netip.ParsePrefix(r.name)
				if err != nil {
					p.errorf(r.nameOff, r.path, "invalid route prefix %q", r.name)
					continue
				}
				ra := routeApprover{prefix: pfx.Masked()}
				for _, s := range p.strs(r.val, r.path) {
					if a, ok := p.owner(s); ok {
						ra.owners = append(ra.owners, a)
					}
				}
				p.pol.routes = append(p.pol.routes, ra)
			}
		},
		"exitnode": func(f member) {
			for _, s := range p.strs(f.val, f.path) {
				if a, ok := p.owner(s); ok {
					p.pol.exitNode = append(p.pol.exitNode, a)
				}
			}
		},
	})
}

func (p *parser) parseTests(m member) {
	els, _ := p.array(m.val, "tests")
	for i, e := range els {
		path := fmt.Sprintf("tests[%d]", i)
		t := aclTest{off: e.StartOffset, path: path}
		srcSet := false
		ok := p.fields(e, path, nil, map[string]func(member){
			"src": func(f member) {
				s, ok := p.str(f.val, f.path)
				if !ok {
					return
				}
				srcSet = true
				t.srcStr = strings.TrimSpace(s)
				if t.srcStr == "" {
					p.errorf(f.val.StartOffset, f.path, "test src must not be empty")
					return
				}
				t.src, _ = p.alias(strAt{s: t.srcStr, off: f.val.StartOffset, path: f.path}, ctxSrc)
			},
			"proto": func(f member) {
				s, ok := literalText(f.val)
				if !ok {
					p.errorf(f.val.StartOffset, f.path, "expected a protocol name or number")
					return
				}
				pr, msg := parseProtocol(s)
				if msg == "" && pr.name != "" && pr.name != "tcp" && pr.name != "udp" && pr.name != "sctp" {
					msg = fmt.Sprintf("test protocol must be tcp, udp, sctp, or empty (got %q)", pr.name)
				}
				if msg != "" {
					p.errorf(f.val.StartOffset, f.path, "%s", msg)
					return
				}
				t.proto = pr
			},
			"accept": func(f member) { t.accept = p.testDsts(f) },
			"deny":   func(f member) { t.deny = p.testDsts(f) },
		})
		if !ok {
			continue
		}
		if !srcSet {
			p.errorf(e.StartOffset, path, "test src must be specified")
		}
		if len(t.accept) == 0 && len(t.deny) == 0 {
			p.errorf(e.StartOffset, path, `test entry must have at least one of "accept" or "deny"`)
		}
		p.pol.tests = append(p.pol.tests, t)
	}
}

// testDsts reads tests accept/deny: each one host:port with a single
// port and a single host.
func (p *parser) testDsts(f member) []strAt {
	var out []strAt
	for _, s := range p.strs(f.val, f.path) {
		host, ports, msg := splitHostPort(s.s)
		if msg != "" {
			p.errorf(s.off, s.path, "%s", msg)
			continue
		}
		pr, msg := parsePorts(ports)
		if msg == "" && (len(pr) != 1 || pr[0].First != pr[0].Last) {
			msg = "test destination port must be a single port"
		}
		if msg != "" {
			p.errorf(s.off, s.path, "%q: %s", s.s, msg)
			continue
		}
		a, ok := p.alias(strAt{s: host, off: s.off, path: s.path}, ctxTestDst)
		if !ok {
			continue
		}
		switch {
		case a.is(agInternet):
			p.errorf(s.off, s.path, "autogroup:internet not valid as a test destination")
			continue
		case (a.kind == kindPrefix && strings.Contains(host, "/")) ||
			(a.kind == kindHost && a.pfx.Bits() < a.pfx.Addr().BitLen()):
			p.errorf(s.off, s.path, "test destination must be a single host, not a CIDR range")
			continue
		}
		out = append(out, s)
	}
	return out
}

func (p *parser) parseSSHTests(m member) {
	els, _ := p.array(m.val, "sshTests")
	for i, e := range els {
		path := fmt.Sprintf("sshTests[%d]", i)
		t := sshTest{off: e.StartOffset, path: path}
		srcOK := false
		ok := p.fields(e, path, nil, map[string]func(member){
			"src": func(f member) {
				s, ok := p.str(f.val, f.path)
				if !ok {
					return
				}
				s = strings.TrimSpace(s)
				if s == "" {
					return
				}
				t.src, srcOK = p.alias(strAt{s: s, off: f.val.StartOffset, path: f.path}, ctxSrc)
				if !srcOK {
					srcOK = true // reported already
				}
			},
			"dst": func(f member) {
				for _, s := range p.strs(f.val, f.path) {
					a, msg := parseAlias(s.s)
					if msg == "" {
						a.off, a.path = s.off, s.path
						switch {
						case a.is(agInternet), a.kind == kindWildcard:
							msg = fmt.Sprintf("SSH tests dst contains disallowed element %q", s.s)
						case a.kind == kindTag:
							if _, ok := p.pol.tagOwners[a.text]; !ok {
								msg = fmt.Sprintf("SSH tests dst contains unknown tag %q", s.s)
							}
						case a.kind == kindPrefix && a.pfx.Bits() < a.pfx.Addr().BitLen():
							msg = fmt.Sprintf("SSH tests dst contains disallowed element %q", s.s)
						default:
							msg = p.checkAlias(&a, ctxSSHTestD)
							if msg == "" && a.kind == kindHost && a.pfx.Bits() < a.pfx.Addr().BitLen() {
								msg = fmt.Sprintf("SSH tests dst contains disallowed element %q", s.s)
							}
						}
					}
					if msg != "" {
						p.errorf(s.off, s.path, "%s", msg)
						continue
					}
					t.dst = append(t.dst, a)
				}
			},
			"accept": func(f member) { t.accept = p.strs(f.val, f.path) },
			"deny":   func(f member) { t.deny = p.strs(f.val, f.path) },
			"check":  func(f member) { t.check = p.strs(f.val, f.path) },
		})
		if !ok {
			continue
		}
		if !srcOK {
			p.errorf(e.StartOffset, path, "SSH tests entry must have a non-empty src")
		}
		if len(t.dst) == 0 {
			p.errorf(e.StartOffset, path, "SSH tests entry must have at least one dst")
		}
		if len(t.accept) == 0 && len(t.deny) == 0 && len(t.check) == 0 {
			p.errorf(e.StartOffset, path, "SSH tests entry must have at least one of accept, deny or check")
		}
		for _, l := range [][]strAt{t.accept, t.deny, t.check} {
			for _, u := range l {
				if u.s == "" {
					p.errorf(u.off, u.path, `user "" is not valid`)
				}
			}
		}
		p.pol.sshTests = append(p.pol.sshTests, t)
	}
}
