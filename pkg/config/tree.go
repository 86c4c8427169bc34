package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// This file reads the one parse of the config file, its YAML node tree, for
// what a decoded map cannot tell: the line of every key and value, keys set
// twice, and keys this server does not know.

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

// resolve follows YAML aliases.
func resolve(n *yamlv3.Node) *yamlv3.Node {
	for n != nil && n.Kind == yamlv3.AliasNode {
		n = n.Alias
	}
	return n
}

// isNull reports whether n is an empty value ("key:" or "key: ~"), which
// leaves the key unset.
func isNull(n *yamlv3.Node) bool {
	return n != nil && n.Kind == yamlv3.ScalarNode && n.Tag == "!!null"
}

// isMergeKey reports whether k is the "<<" key of a YAML merge.
func isMergeKey(k *yamlv3.Node) bool {
	return k.Value == "<<" && k.Tag == "!!merge"
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
// problem with the expansion is reported at. The first record of a path
// wins, so keys written in a mapping are recorded before keys merged into
// it with "<<", which they override.
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
		var merges []*yamlv3.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMergeKey(k) {
				merges = append(merges, v)
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
		for _, v := range merges {
			if !l.recordMerge(prefix, v, via) {
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
		if isMergeKey(k) {
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
			case isNull(rv):
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
