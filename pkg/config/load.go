package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/env/v2"
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
// HEADSCALE_CONFIG, then the first existing search path (HOME, for
// DefaultSearchPaths, from env). "" means none.
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
		search = DefaultSearchPaths(env["HOME"])
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

// loader carries the state of one Load call. Its koanf instance holds the
// configuration layers merged so far, each later one winning over the
// earlier ones:
//
//	defaults  the def of every active key (newLoader)
//	file      the keys the YAML file sets, old names mapped onto their
//	          replacements (loadFile, applyLegacy, then mergeFile)
//	aliases   the bare CLUSTER_ID and PG_DSN (loadAliases, cluster.go)
//	env       HEADSCALE_<KEY> variables (loadEnv); then the relative paths
//	          Headscale takes from the config file's directory are made
//	          absolute there (resolveRelative)
//	system    Headscale's locations (/var/lib/headscale, its socket) when
//	          the file leaves state_dir unset (loadSystem)
//	derived   paths inside state_dir for path keys still unset (loadDerived)
//
// unmarshal then turns the merged values into a Config (decode.go), and
// validate checks it (validate.go).
type loader struct {
	idx    keyIndex
	k      *koanf.Koanf
	source string

	// file is the file layer before it is merged: the value of every table
	// key the file sets, by key.
	file map[string]any

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

	// relative maps each key resolveRelative rewrote to the value as
	// written, relative to the working directory (see warnRelative).
	relative map[string]string

	// env is the environment Load was given, by name.
	env map[string]string

	errs, warns []Problem
}

// newLoader returns a loader for the file at source ("" for none) holding
// the defaults layer.
func newLoader(source string) (*loader, error) {
	l := &loader{
		idx:      newKeyIndex(),
		k:        koanf.New("."),
		source:   source,
		file:     map[string]any{},
		lines:    map[string]int{},
		nodes:    map[string]*yamlv3.Node{},
		origins:  map[string]origin{},
		bad:      map[string]bool{},
		relative: map[string]string{},
	}
	if err := l.k.Load(confmap.Provider(l.idx.defaults(), "."), nil); err != nil {
		return nil, fmt.Errorf("loading configuration defaults: %w", err)
	}
	return l, nil
}

// set replaces the merged value of key (rather than merging maps into it).
func (l *loader) set(key string, v any) error {
	l.k.Delete(key)
	if err := l.k.Set(key, v); err != nil {
		return fmt.Errorf("setting %s: %w", key, err)
	}
	return nil
}

// loadFile parses data once, into a YAML node tree, and reads everything
// from that tree: the line of every path and the key checks (tree.go), and
// the file layer, the value of every table key the file sets. An empty
// value ("key:") leaves the key unset. It returns false when the file is
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
	if root == nil || isNull(root) {
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
	// The yaml library reports some mistakes (a key repeated inside a
	// value, a key that is a list) only when it decodes a tree; the whole
	// file must decode, unknown keys included.
	var whole map[string]any
	if err := doc.Decode(&whole); err != nil {
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
		switch {
		case isNull(n):
			// Unset: the lower layers keep their value.
		case s.text && n.Kind == yamlv3.ScalarNode:
			l.file[s.key] = n.Value
		default:
			var v any
			if err := n.Decode(&v); err != nil {
				l.errs = append(l.errs, l.yamlProblem(err))
				return false, nil
			}
			l.file[s.key] = v
		}
	}
	return true, nil
}

// mergeFile merges the file layer over the defaults.
func (l *loader) mergeFile() error {
	if err := l.k.Load(confmap.Provider(l.file, "."), nil); err != nil {
		return fmt.Errorf("loading %s: %w", l.source, err)
	}
	return nil
}

// applyLegacy maps old Headscale key names onto their replacements in the
// file layer: one warning per old key, or an error when the file also sets
// the new key.
func (l *loader) applyLegacy() {
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

		v := l.file[s.key]
		if v == nil {
			continue
		}
		from := origin{file: l.source, key: s.key, line: line}
		if s.key == "ip_prefixes" {
			l.splitIPPrefixes(v, from)
			continue
		}
		for _, r := range s.replacedBy {
			l.file[r] = v
			l.origins[r] = from
		}
	}
}

// splitIPPrefixes turns the old ip_prefixes list into prefixes.v4/v6. A
// family missing from the list is left unconfigured, as it was before.
func (l *loader) splitIPPrefixes(v any, from origin) {
	items, err := toStringList(v)
	if err != nil {
		l.errs = append(l.errs, l.problemFrom(from, "", err.Error()))
		return
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
		l.file[key] = val
		l.origins[key] = from
	}
}

// loadEnv merges the environment layer: HEADSCALE_<KEY> for every active
// key, the key upper-cased with dots as underscores (HEADSCALE_DNS_BASE_DOMAIN
// for dns.base_domain). Other HEADSCALE_* variables are ignored; of a name
// given twice the last wins. Values stay strings; unmarshalling parses them
// (comma-separated or YAML for lists and maps).
func (l *loader) loadEnv(environ []string) error {
	p := env.Provider(".", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			s, ok := l.idx.byEnv[name]
			if !ok {
				return "", nil
			}
			l.origins[s.key] = origin{file: "env " + name, key: s.key}
			return s.key, value
		},
	})
	if err := l.k.Load(p, nil); err != nil {
		return fmt.Errorf("loading %s* environment variables: %w", envPrefix, err)
	}
	return nil
}

// explicit reports whether the file or the environment sets key (an empty
// value in the file leaves it unset).
func (l *loader) explicit(key string) bool {
	if _, ok := l.file[key]; ok {
		return true
	}
	return strings.HasPrefix(l.origins[key].file, "env ")
}

// resolveRelative applies Headscale's rule for paths: when a config file
// was loaded, a relative value of a fileRelative key (the key files, the
// SQLite database, the policy file, the TLS files), from the file or the
// environment, is taken relative to the directory of that file rather
// than the working directory. Headscale resolves those keys whatever set
// them, so the environment is included; its other paths (derp.paths,
// dns.extra_records_path, unix_socket) and our own state_dir, with the
// paths derived from it, stay relative to the working directory. With no
// file nothing changes.
func (l *loader) resolveRelative() error {
	if l.source == "" {
		return nil
	}
	dir, err := filepath.Abs(filepath.Dir(l.source))
	if err != nil {
		return fmt.Errorf("resolving the directory of %s: %w", l.source, err)
	}
	for _, s := range l.idx.all {
		if !s.fileRelative || !l.explicit(s.key) {
			continue
		}
		v, ok := l.k.Get(s.key).(string)
		if !ok || strings.TrimSpace(v) == "" || filepath.IsAbs(v) {
			continue
		}
		if err := l.set(s.key, filepath.Join(dir, v)); err != nil {
			return err
		}
		l.relative[s.key] = v
	}
	return nil
}

// warnRelative warns about each path resolveRelative moved away from
// where this server looked before (relative to the working directory)
// while the new location is missing and the old one exists: without the
// warning a key file would be generated afresh, or an empty database
// created, next to the config file.
func (l *loader) warnRelative() {
	for _, s := range l.idx.all {
		old, ok := l.relative[s.key]
		if !ok {
			continue
		}
		resolved, _ := toString(l.k.Get(s.key))
		if abs, err := filepath.Abs(old); err != nil || abs == resolved {
			continue
		}
		if _, err := os.Stat(old); err != nil {
			continue
		}
		if _, err := os.Stat(resolved); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		l.warnf(s.key, "relative paths are taken from the config file's directory, as Headscale does: %s does not exist, "+
			"but %s (relative to the working directory, where it was looked for before) does; write its absolute path to keep using it",
			resolved, old)
	}
}

// headscaleLayout reports whether the paths follow Headscale's layout: a
// config file was loaded and neither it nor the environment sets
// state_dir. A file written for Headscale never names state_dir (the key is
// ours), and Headscale keeps its state in /var/lib/headscale and its socket
// at /var/run/headscale/headscale.sock wherever it is started from. Without
// a file (or with state_dir set) every path stays inside state_dir.
func (l *loader) headscaleLayout() bool {
	return l.source != "" && !l.explicit("state_dir")
}

// loadSystem merges the system layer: in Headscale's layout, every key
// with a system default that the file and environment leave unset gets it,
// under root ("" for /). state_dir's takes the derived paths (database,
// keys) into /var/lib/headscale; the socket goes to Headscale's path.
func (l *loader) loadSystem(root string) error {
	if !l.headscaleLayout() {
		return nil
	}
	paths := map[string]any{}
	for _, s := range l.idx.all {
		if s.system != "" && !l.explicit(s.key) {
			paths[s.key] = filepath.Join("/", root, s.system)
		}
	}
	if err := l.k.Load(confmap.Provider(paths, "."), nil); err != nil {
		return fmt.Errorf("loading Headscale's default paths: %w", err)
	}
	return nil
}

// warnOldState warns when Headscale's layout takes the state away from
// where this server kept it before with the same file: a file without
// state_dir used ./data (relative to the working directory) until
// Headscale's defaults applied to it. It fires only while the new database
// does not exist yet and ./data holds one, that is on the first start after
// the upgrade.
func (l *loader) warnOldState(c *Config) {
	if !l.headscaleLayout() || l.explicit("database.sqlite.path") || c.Database.Type != "sqlite" {
		return
	}
	old := defaultStateDir + "/db.sqlite"
	if _, err := os.Stat(old); err != nil {
		return
	}
	if _, err := os.Stat(c.Database.SQLite.Path); !errors.Is(err, fs.ErrNotExist) {
		return
	}
	l.warnf("state_dir", "not set, so the state is kept in %s as with Headscale; %s, where it was kept before "+
		"with this file, is not used: set state_dir: %s to keep using it", c.StateDir, old, defaultStateDir)
}

// clientSockets lists the sockets a local client tries, in order (see
// Config.ClientSockets): with no file and the socket left to its default,
// Headscale's socket (under root) comes before the one in state_dir.
func (l *loader) clientSockets(c *Config, root string) []string {
	if l.source == "" && !l.explicit("unix_socket") && !l.explicit("state_dir") {
		return []string{filepath.Join("/", root, systemUnixSocket), c.UnixSocket}
	}
	return []string{c.UnixSocket}
}

// loadDerived merges the last layer: each path key still unset gets its
// file inside state_dir (or a bare file name when state_dir is not text,
// which unmarshal reports).
func (l *loader) loadDerived() error {
	stateDir, _ := toString(l.k.Get("state_dir"))
	paths := map[string]any{}
	for _, s := range l.idx.all {
		if s.derived != "" && l.k.Get(s.key) == nil {
			paths[s.key] = filepath.Join(stateDir, s.derived)
		}
	}
	if err := l.k.Load(confmap.Provider(paths, "."), nil); err != nil {
		return fmt.Errorf("loading paths inside state_dir: %w", err)
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

// keyError records a problem a Check found about p.Key, placed where that
// key's value came from.
func (l *loader) keyError(p Problem) {
	l.errorf(p.Key, "%s", p.Reason)
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
