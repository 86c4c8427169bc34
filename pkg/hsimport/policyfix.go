package hsimport

import (
	"slices"
	"strings"

	"github.com/tailscale/hujson"
)

// addUserAt rewrites a policy of Headscale ≤0.25 (policy v1), which named
// users bare ("alice"), to the form policy v2 and this server require
// ("alice@"): every string value that is exactly a user name, or a user
// name followed by ":ports" in an ACL destination, gets the "@". Values
// under "users" (SSH login names) and "hosts" are left alone, as are
// member names. Comments and layout are kept. It reports whether anything
// changed.
func addUserAt(text string, users []string) (string, bool) {
	if len(users) == 0 {
		return text, false
	}
	v, err := hujson.Parse([]byte(text))
	if err != nil {
		return text, false
	}
	changed := false
	var walk func(v *hujson.Value, parent string)
	walk = func(v *hujson.Value, parent string) {
		switch t := v.Value.(type) {
		case *hujson.Object:
			for i := range t.Members {
				m := &t.Members[i]
				name := ""
				if lit, ok := m.Name.Value.(hujson.Literal); ok {
					name = lit.String()
				}
				walk(&m.Value, name)
			}
		case *hujson.Array:
			for i := range t.Elements {
				walk(&t.Elements[i], parent)
			}
		case hujson.Literal:
			if t.Kind() != '"' || parent == "users" || parent == "hosts" {
				return
			}
			s := t.String()
			name, port, hasPort := strings.Cut(s, ":")
			if !hasPort {
				name = s
			}
			if !slices.Contains(users, name) || (hasPort && parent != "dst") {
				return
			}
			out := name + "@"
			if hasPort {
				out += ":" + port
			}
			v.Value = hujson.String(out)
			changed = true
		}
	}
	walk(&v, "")
	if !changed {
		return text, false
	}
	return string(v.Pack()), true
}
