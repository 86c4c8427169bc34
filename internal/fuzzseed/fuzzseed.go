// Package fuzzseed collects the string literals of Go test files, so a fuzz
// target's seed corpus is the real inputs its package's tests use (config
// files, policies, request bodies) and follows them as the tests change.
package fuzzseed

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
)

// Literals returns every distinct string literal (after unquoting) in the
// Go files matching the glob patterns, for which keep reports true, in a
// stable order. A pattern matching nothing is not an error.
func Literals(keep func(string) bool, patterns ...string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, pat := range patterns {
		files, err := filepath.Glob(pat)
		if err != nil {
			return nil, fmt.Errorf("fuzz seeds: pattern %q: %w", pat, err)
		}
		slices.Sort(files)
		for _, name := range files {
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.SkipObjectResolution)
			if err != nil {
				return nil, fmt.Errorf("fuzz seeds: %w", err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err == nil && !seen[s] && keep(s) {
					seen[s] = true
					out = append(out, s)
				}
				return true
			})
		}
	}
	return out, nil
}
