package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	yamlv3 "go.yaml.in/yaml/v3"
)

// parseEnviron turns os.Environ()-style entries into a map; a later entry
// for the same name wins, as with exec.Cmd.Env.
func parseEnviron(environ []string) map[string]string {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue
		}
		env[name] = value
	}
	return env
}

// findConfigFile picks the file to load: the explicit path, then
// HEADSCALE_CONFIG, then the first existing search path. "" means none.
func findConfigFile(opts LoadOptions, env map[string]string) (string, error) {
	explicit := func(path, from string) (string, error) {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("config file %s (from %s): %w", path, from, err)
		}
		return path, nil
	}
	if opts.Path != "" {
		return explicit(opts.Path, "--config")
	}
	if p := env[envConfigPath]; p != "" {
		return explicit(p, envConfigPath)
	}
	search := opts.SearchPaths
	if search == nil {
		search = DefaultSearchPaths()
	}
	for _, p := range search {
		_, err := os.Stat(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("looking for config file %s: %w", p, err)
		}
	}
	return "", nil
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	return data, nil
}

// origin records where the value of a key came from.
type origin struct {
	file string // Problem.File
	key  string // key as written at the source (a legacy name, for instance)
	line int
}

// loader carries the state of one Load call.
type loader struct {
	idx    keyIndex
	k      *koanf.Koanf
	source string

	// lines maps every path seen in the file (mapping keys and sequence
	// items as "path.N") to its line.
	lines map[string]int
	// nodes maps the same paths to their value nodes.
	nodes map[string]*yamlv3.Node
	// origins maps a canonical key to the source of its current value; keys
	// absent here hold defaults.
	origins map[string]origin
	// bad marks keys whose value failed to decode, so validation does not
	// pile follow-on errors onto them.
	bad map[string]bool

	// aliased counts the values record reached through YAML aliases.
	aliased int

	errs, warns []Problem
}

// mapProvider feeds an already nested map to koanf.
type mapProvider map[string]any

func (m mapProvider) Read() (map[string]any, error) { return m, nil }

func (m mapProvider) ReadBytes() ([]byte, error) {
	return nil, errors.New("map provider has no raw bytes")
}

func newLoader(source string) (*loader, error) {
	l := &loader{
		idx:     newKeyIndex(),
		k:       koanf.New("."),
		source:  source,
		lines:   map[string]int{},
		nodes:   map[string]*yamlv3.Node{},
		origins: map[string]origin{},
		bad:     map[string]bool{},
	}
	defaults := map[string]any{}
	for _, s := range l.idx.all {
		if s.status == statusActive && s.def != nil {
			setNested(defaults, strings.Split(s.key, "."), s.def)
		}
	}
	if err := l.k.Load(mapProvider(defaults), nil); err != nil {
		return nil, fmt.Errorf("loading configuration defaults: %w", err)
	}
	return l, nil
}

func setNested(m map[string]any, path []string, v any) {
	for _, p := range path[:len(path)-1] {
		sub, ok := m[p].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[p] = sub
		}
		m = sub
	}
	m[path[len(path)-1]] = v
}

// set replaces the value of key (rather than merging maps into it).
func (l *loader) set(key string, v any) error {
	l.k.Delete(key)
	if err := l.k.Set(key, v); err != nil {
		return fmt.Errorf("setting %s: %w", key, err)
	}
	return nil
}

// yamlProblem turns a YAML library error into a Problem, pulling out the
// line number it mentions.
func (l *loader) yamlProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Problem{File: l.source, Reason: "invalid YAML: " + msg}
	if m := regexp.MustCompile(`line (\d+)`).FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		// The location is in File:Line now; keep the reason short.
		p.Reason = "invalid YAML: " + strings.TrimSpace(strings.Replace(msg, m[0]+":", "", 1))
	}
	return p
}

// loadFile parses data twice: into a node tree for line numbers and key
// checks, and through koanf for values. It returns false when the file is
// unusable (syntax errors, duplicate keys), with the problems recorded.
func (l *loader) loadFile(data []byte) (bool, error) {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(data, &doc); err != nil {
		p := l.yamlProblem(err)
		if p.Line == 0 {
			// The yaml library leaves out the line when the problem is on
			// the first one (its marks are 0-based there).
			p.Line = 1
		}
		l.errs = append(l.errs, p)
		return false, nil
	}
	var root *yamlv3.Node
	if doc.Kind == yamlv3.DocumentNode && len(doc.Content) > 0 {
		root = doc.Content[0]
	}
	if root == nil || (root.Kind == yamlv3.ScalarNode && root.Tag == "!!null") {
		return true, nil // empty file: defaults only
	}
	if root.Kind != yamlv3.MappingNode {
		l.errs = append(l.errs, Problem{File: l.source, Line: root.Line,
			Reason: "the top level of the file must be a mapping of keys"})
		return false, nil
	}
	if !l.record("", root) {
		return false, nil
	}
	before := len(l.errs)
	l.checkKeys("", root)
	if len(l.errs) > before {
		return false, nil
	}

	if err := l.k.Load(rawbytes.Provider(data), yaml.Parser()); err != nil {
		l.errs = append(l.errs, l.yamlProblem(err))
		return false, nil
	}

	for _, s := range l.idx.all {
		n, inFile := l.nodes[s.key]
		if !inFile {
			continue
		}
		if s.status == statusActive {
			l.origins[s.key] = origin{file: l.source, key: s.key, line: l.lines[s.key]}
		}
		// Keep the literal text of string-like scalars: YAML would turn
		// 0770 into 504 and a password like 0123 into 83.
		if (s.kind == kindString || s.kind == kindFileMode) &&
			n.Kind == yamlv3.ScalarNode && n.Tag != "!!null" {
			if err := l.set(s.key, n.Value); err != nil {
				return false, err
			}
		}
	}
	return true, nil
}

// resolve follows YAML aliases.
func resolve(n *yamlv3.Node) *yamlv3.Node {
	for n != nil && n.Kind == yamlv3.AliasNode {
		n = n.Alias
	}
	return n
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// maxAliasedValues bounds how many values record may reach through YAML
// aliases. Real files use a few anchors (a shared section merged in with
// "<<"); a chain of aliases to aliases doubles the tree at every step
// ("billion laughs") and must be refused, not walked.
const maxAliasedValues = 10000

// record walks the tree storing the line and value node of every path. It
// returns false, with a problem recorded, when aliases expand the tree
// beyond maxAliasedValues.
func (l *loader) record(prefix string, n *yamlv3.Node) bool {
	return l.recordNode(prefix, n, nil)
}

// recordNode records n under prefix; via is the outermost alias through
// which n was reached (nil: n is where it was written), and the line a
// problem with the expansion is reported at.
func (l *loader) recordNode(prefix string, n, via *yamlv3.Node) bool {
	if via == nil && n != nil && n.Kind == yamlv3.AliasNode {
		via = n
	}
	n = resolve(n)
	if n == nil {
		return true
	}
	if via != nil {
		if l.aliased++; l.aliased > maxAliasedValues {
			l.errs = append(l.errs, Problem{File: l.source, Line: via.Line,
				Reason: fmt.Sprintf("YAML aliases expand to more than %d values; use fewer nested aliases", maxAliasedValues)})
			return false
		}
	}
	switch n.Kind {
	case yamlv3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" && k.Tag == "!!merge" {
				if !l.recordMerge(prefix, v, via) {
					return false
				}
				continue
			}
			path := join(prefix, k.Value)
			if _, seen := l.lines[path]; !seen {
				l.lines[path] = k.Line
				l.nodes[path] = resolve(v)
			}
			if !l.recordNode(path, v, via) {
				return false
			}
		}
	case yamlv3.SequenceNode:
		for i, item := range n.Content {
			path := join(prefix, strconv.Itoa(i))
			l.lines[path] = item.Line
			l.nodes[path] = resolve(item)
			if !l.recordNode(path, item, via) {
				return false
			}
		}
	}
	return true
}

func (l *loader) recordMerge(prefix string, v, via *yamlv3.Node) bool {
	if via == nil && v != nil && v.Kind == yamlv3.AliasNode {
		via = v
	}
	v = resolve(v)
	if v == nil {
		return true
	}
	if v.Kind == yamlv3.SequenceNode {
		for _, item := range v.Content {
			if !l.recordNode(prefix, item, via) {
				return false
			}
		}
		return true
	}
	return l.recordNode(prefix, v, via)
}

// checkKeys classifies every key of a mapping against the key table:
// unknown keys and ignored ones warn, legacy keys are handled later by
// applyLegacy, duplicates and misplaced scalars are errors.
func (l *loader) checkKeys(prefix string, n *yamlv3.Node) {
	n = resolve(n)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			// Keys merged in from an anchor are checked where the anchor is.
			continue
		}
		path := join(prefix, k.Value)
		if first, dup := seen[k.Value]; dup {
			l.errs = append(l.errs, Problem{File: l.source, Line: k.Line, Key: path,
				Reason: fmt.Sprintf("key is set twice (first on line %d)", first)})
			continue
		}
		seen[k.Value] = k.Line

		spec, known := l.idx.byKey[path]
		switch {
		case known && spec.status == statusUnused:
			l.warns = append(l.warns, Problem{File: l.source, Line: k.Line, Key: path, Reason: spec.note})
		case known || l.idx.inSubtree(path):
			// Active, legacy (handled by applyLegacy) or reserved.
		case l.idx.parents[path]:
			rv := resolve(v)
			switch {
			case rv.Kind == yamlv3.MappingNode:
				l.checkKeys(path, rv)
			case rv.Kind == yamlv3.ScalarNode && rv.Tag == "!!null":
				// An empty section leaves its keys at their defaults.
			default:
				l.errs = append(l.errs, Problem{File: l.source, Line: k.Line, Key: path,
					Reason: "must be a mapping of keys, not a single value or list"})
			}
		default:
			l.warns = append(l.warns, Problem{File: l.source, Line: k.Line, Key: path, Reason: "unknown key, ignored"})
		}
	}
}

// present reports whether the file sets path.
func (l *loader) present(path string) bool {
	_, ok := l.lines[path]
	return ok
}

// applyLegacy maps old Headscale key names onto their replacements: one
// warning per old key, or an error when the file also sets the new key.
func (l *loader) applyLegacy() error {
	for _, s := range l.idx.all {
		if s.status != statusLegacy || !l.present(s.key) {
			continue
		}
		line := l.lines[s.key]
		conflict := false
		for _, r := range s.replacedBy {
			if !l.present(r) {
				continue
			}
			conflict = true
			l.errs = append(l.errs, Problem{File: l.source, Line: line, Key: s.key,
				Reason: fmt.Sprintf("old key %s (line %d) and its replacement %s (line %d) are both set; keep only %s",
					s.key, line, r, l.lines[r], r)})
		}
		if conflict {
			continue
		}
		l.warns = append(l.warns, Problem{File: l.source, Line: line, Key: s.key,
			Reason: fmt.Sprintf("deprecated key, use %s instead", strings.Join(s.replacedBy, " and "))})

		v := l.k.Get(s.key)
		if v == nil {
			continue
		}
		from := origin{file: l.source, key: s.key, line: line}
		if s.key == "ip_prefixes" {
			if err := l.splitIPPrefixes(v, from); err != nil {
				return err
			}
			continue
		}
		for _, r := range s.replacedBy {
			if err := l.set(r, v); err != nil {
				return err
			}
			l.origins[r] = from
		}
	}
	return nil
}

// splitIPPrefixes turns the old ip_prefixes list into prefixes.v4/v6. A
// family missing from the list is left unconfigured, as it was before.
func (l *loader) splitIPPrefixes(v any, from origin) error {
	items, err := toStringList(v)
	if err != nil {
		l.errs = append(l.errs, l.problemFrom(from, "", err.Error()))
		return nil
	}
	var v4, v6 string
	ok := true
	for i, item := range items {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			l.errs = append(l.errs, l.problemFrom(from, strconv.Itoa(i),
				fmt.Sprintf("%q is not a CIDR prefix", item)))
			ok = false
			continue
		}
		target := &v4
		if p.Addr().Is6() {
			target = &v6
		}
		if *target != "" {
			l.errs = append(l.errs, l.problemFrom(from, strconv.Itoa(i),
				fmt.Sprintf("only one prefix per address family is supported, %s is extra", item)))
			ok = false
			continue
		}
		*target = item
	}
	if !ok {
		l.bad["prefixes.v4"], l.bad["prefixes.v6"] = true, true
	}
	for key, val := range map[string]string{"prefixes.v4": v4, "prefixes.v6": v6} {
		if err := l.set(key, val); err != nil {
			return err
		}
		l.origins[key] = from
	}
	return nil
}

// loadEnv applies HEADSCALE_<KEY> overrides for every active key. Other
// HEADSCALE_* variables are ignored. Values stay strings; the decoders parse
// them (comma-separated or YAML for lists and maps).
func (l *loader) loadEnv(env map[string]string) error {
	names := make([]string, 0, len(env))
	for name := range env {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s, ok := l.idx.byEnv[name]
		if !ok {
			continue
		}
		if err := l.set(s.key, env[name]); err != nil {
			return err
		}
		l.origins[s.key] = origin{file: "env " + name, key: s.key}
	}
	return nil
}

// problemFrom builds a Problem located at o; sub, when not empty, is a
// path below o.key (such as a list index) whose own line is used if known.
func (l *loader) problemFrom(o origin, sub, reason string) Problem {
	p := Problem{File: o.file, Line: o.line, Key: o.key, Reason: reason}
	if sub != "" && o.file == l.source && l.source != "" {
		if line, ok := l.lines[o.key+"."+sub]; ok {
			p.Line = line
		}
	}
	return p
}

// where is the origin of key's current value (defaults have no file).
func (l *loader) where(key string) origin {
	if o, ok := l.origins[key]; ok {
		return o
	}
	return origin{key: key}
}

// errorf records a fatal problem about key.
func (l *loader) errorf(key, format string, args ...any) {
	l.errs = append(l.errs, l.problemFrom(l.where(key), "", fmt.Sprintf(format, args...)))
}

// warnf records a warning about key.
func (l *loader) warnf(key, format string, args ...any) {
	l.warns = append(l.warns, l.problemFrom(l.where(key), "", fmt.Sprintf(format, args...)))
}

// itemErrorf records a fatal problem about one element (list index or map
// key) of key, located at that element's line when known.
func (l *loader) itemErrorf(key, sub, format string, args ...any) {
	l.errs = append(l.errs, l.problemFrom(l.where(key), sub, fmt.Sprintf(format, args...)))
}

// sortProblems orders problems the way an operator fixes them: the file
// top to bottom, then environment variables, then defaults.
func (l *loader) sortProblems(ps []Problem) []Problem {
	rank := func(p Problem) int {
		switch {
		case p.File != "" && p.File == l.source:
			return 0
		case p.File != "":
			return 1
		default:
			return 2
		}
	}
	out := append([]Problem(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
	return out
}

func (l *loader) sortedErrors() []Problem   { return l.sortProblems(l.errs) }
func (l *loader) sortedWarnings() []Problem { return l.sortProblems(l.warns) }
