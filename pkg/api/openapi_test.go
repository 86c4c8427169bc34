package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// publicRoutes are served next to the API's route table and documented in
// openapi.yaml, but are not in Routes().
var publicRoutes = []string{"GET /api/v1/openapi.yaml"}

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

// openAPIRoot parses the embedded document and returns its top mapping.
func openAPIRoot(t *testing.T) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.yaml is not valid YAML: %v", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		t.Fatalf("openapi.yaml: want one YAML document holding a mapping")
	}
	return doc.Content[0]
}

// get returns the value under key in mapping n, or nil.
func get(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// keys returns the keys of mapping n in document order.
func keys(n *yaml.Node) []string {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var out []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, n.Content[i].Value)
	}
	return out
}

// lookup follows a local JSON pointer ("#/components/schemas/User").
func lookup(root *yaml.Node, ref string) (*yaml.Node, error) {
	ptr, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("only local references (#/...) are used here, got %q", ref)
	}
	n := root
	for _, tok := range strings.Split(ptr, "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		if n = get(n, tok); n == nil {
			return nil, fmt.Errorf("reference %q does not resolve", ref)
		}
	}
	return n, nil
}

// deref returns n, or what it points to when it is a {$ref: ...} object.
func deref(t *testing.T, root, n *yaml.Node) *yaml.Node {
	t.Helper()
	for range 10 {
		ref := get(n, "$ref")
		if ref == nil {
			return n
		}
		next, err := lookup(root, ref.Value)
		if err != nil {
			t.Fatal(err)
		}
		n = next
	}
	t.Fatalf("reference chain too long at line %d", n.Line)
	return nil
}

var paramRE = regexp.MustCompile(`\{[^}]*\}`)

// normRoute turns "METHOD /a/{x}/b/{y...}" into "METHOD /a/{}/b/{}", so that
// parameter names may differ between the document and the code.
func normRoute(r string) string {
	method, path, _ := strings.Cut(strings.TrimSpace(r), " ")
	return strings.ToUpper(method) + " " + paramRE.ReplaceAllString(strings.TrimSpace(path), "{}")
}

// operation is one documented operation.
type operation struct {
	route string // "METHOD /path/{name}" as written in the document
	node  *yaml.Node
	path  *yaml.Node // its path item
}

func operations(t *testing.T, root *yaml.Node) []operation {
	t.Helper()
	paths := get(root, "paths")
	if paths == nil || paths.Kind != yaml.MappingNode {
		t.Fatal("openapi.yaml: no paths mapping")
	}
	var out []operation
	for i := 0; i+1 < len(paths.Content); i += 2 {
		p, item := paths.Content[i].Value, paths.Content[i+1]
		for _, k := range keys(item) {
			if slices.Contains(httpMethods, k) {
				out = append(out, operation{route: strings.ToUpper(k) + " " + p, node: get(item, k), path: item})
			}
		}
	}
	return out
}

func TestOpenAPIDocument(t *testing.T) {
	root := openAPIRoot(t)
	if v := get(root, "openapi"); v == nil || !strings.HasPrefix(v.Value, "3.1.") {
		t.Errorf("openapi.yaml: want openapi: 3.1.x, got %v", v)
	}
	if get(get(root, "info"), "title") == nil || get(get(root, "info"), "version") == nil {
		t.Error("openapi.yaml: info needs title and version")
	}
	if get(get(get(root, "components"), "securitySchemes"), "bearerAuth") == nil {
		t.Error("openapi.yaml: components.securitySchemes.bearerAuth is missing")
	}
	if sec := get(root, "security"); sec == nil || len(sec.Content) == 0 || get(sec.Content[0], "bearerAuth") == nil {
		t.Error("openapi.yaml: the global security requirement must be bearerAuth")
	}
	for _, name := range []string{"User", "Node", "PreAuthKey", "ApiKey", "Problem"} {
		if get(get(get(root, "components"), "schemas"), name) == nil {
			t.Errorf("openapi.yaml: components.schemas.%s is missing", name)
		}
	}
	// The Problem schema must describe exactly what problem() writes.
	rec := httptest.NewRecorder()
	problem(rec, http.StatusNotFound, "x")
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("problem() writes Content-Type %q; the document says application/problem+json", ct)
	}
	var written map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &written); err != nil {
		t.Fatalf("problem() wrote invalid JSON: %v", err)
	}
	schema := get(get(get(root, "components"), "schemas"), "Problem")
	props := keys(get(schema, "properties"))
	var required []string
	if r := get(schema, "required"); r != nil {
		for _, c := range r.Content {
			required = append(required, c.Value)
		}
	}
	for f := range written {
		if !slices.Contains(props, f) || !slices.Contains(required, f) {
			t.Errorf("openapi.yaml: problem() writes %q; the Problem schema must list it as a required property", f)
		}
	}
	for _, f := range props {
		if _, ok := written[f]; !ok {
			t.Errorf("openapi.yaml: the Problem schema has %q, which problem() does not write", f)
		}
	}
	// Every $ref resolves.
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			if ref := get(n, "$ref"); ref != nil {
				if _, err := lookup(root, ref.Value); err != nil {
					t.Errorf("openapi.yaml line %d: %v", ref.Line, err)
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(root)
}

// TestOpenAPISchemasMatchTypes checks that the component schemas name the
// same JSON fields as the Go types the handlers encode.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	root := openAPIRoot(t)
	schemas := get(get(root, "components"), "schemas")
	for name, typ := range map[string]reflect.Type{
		"User":       reflect.TypeFor[User](),
		"Node":       reflect.TypeFor[Node](),
		"PreAuthKey": reflect.TypeFor[PreAuthKey](),
		"Route":      reflect.TypeFor[Route](),
	} {
		schema := get(schemas, name)
		if schema == nil {
			t.Errorf("openapi.yaml: components.schemas.%s is missing", name)
			continue
		}
		props := keys(get(schema, "properties"))
		var required []string
		if r := get(schema, "required"); r != nil {
			for _, c := range r.Content {
				required = append(required, c.Value)
			}
		}
		var fields []string
		for f := range typ.Fields() {
			tag, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || tag == "-" {
				continue
			}
			if tag == "" {
				tag = f.Name
			}
			fields = append(fields, tag)
			if !slices.Contains(props, tag) {
				t.Errorf("openapi.yaml: %s.%s is sent as %q, but schema %s has no such property", typ.Name(), f.Name, tag, name)
			}
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") && !slices.Contains(required, tag) {
				t.Errorf("openapi.yaml: %s is always sent, so schema %s must list it as required", tag, name)
			}
		}
		for _, p := range props {
			if !slices.Contains(fields, p) {
				t.Errorf("openapi.yaml: schema %s has property %q, which type %s does not send", name, p, typ.Name())
			}
		}
	}
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	root := openAPIRoot(t)

	served := map[string]string{} // normalised -> as the code writes it
	for _, r := range append((&API{}).Routes(), publicRoutes...) {
		if prev, dup := served[normRoute(r)]; dup {
			t.Errorf("route %q is served twice (also as %q)", r, prev)
		}
		served[normRoute(r)] = r
	}
	documented := map[string]string{}
	for _, op := range operations(t, root) {
		documented[normRoute(op.route)] = op.route
	}

	var undocumented, unserved []string
	for n, r := range served {
		if _, ok := documented[n]; !ok {
			undocumented = append(undocumented, r)
		}
	}
	for n, r := range documented {
		if _, ok := served[n]; !ok {
			unserved = append(unserved, r)
		}
	}
	slices.Sort(undocumented)
	slices.Sort(unserved)
	for _, r := range undocumented {
		t.Errorf("route %s is served but not documented in pkg/api/openapi.yaml", r)
	}
	for _, r := range unserved {
		t.Errorf("%s is documented in pkg/api/openapi.yaml but not served (no such route in API.Routes())", r)
	}
}

func TestOpenAPIOperations(t *testing.T) {
	root := openAPIRoot(t)
	ids := map[string]string{}
	for _, op := range operations(t, root) {
		where := "openapi.yaml " + op.route

		id := get(op.node, "operationId")
		switch {
		case id == nil || id.Value == "":
			t.Errorf("%s: no operationId", where)
		case ids[id.Value] != "":
			t.Errorf("%s: operationId %q is also used by %s", where, id.Value, ids[id.Value])
		default:
			ids[id.Value] = op.route
		}

		responses := get(op.node, "responses")
		if get(responses, "200") == nil {
			t.Errorf("%s: no 200 response", where)
		}
		sec := get(op.node, "security")
		public := sec != nil && sec.Kind == yaml.SequenceNode && len(sec.Content) == 0
		if !public && get(responses, "401") == nil {
			t.Errorf("%s: no 401 response (or mark it public with security: [])", where)
		}

		// Error responses are RFC 7807 problems.
		for _, code := range keys(responses) {
			if code < "400" || code > "599" {
				continue
			}
			resp := deref(t, root, get(responses, code))
			content := get(resp, "content")
			if get(content, "application/problem+json") == nil || len(keys(content)) != 1 {
				t.Errorf("%s: response %s must be application/problem+json only", where, code)
				continue
			}
			schema := get(get(content, "application/problem+json"), "schema")
			if ref := get(schema, "$ref"); ref == nil || ref.Value != "#/components/schemas/Problem" {
				t.Errorf("%s: response %s must use #/components/schemas/Problem", where, code)
			}
		}

		// Every {param} in the path is declared as a path parameter, and
		// nothing else is.
		var declared []string
		for _, list := range []*yaml.Node{get(op.path, "parameters"), get(op.node, "parameters")} {
			if list == nil {
				continue
			}
			for _, p := range list.Content {
				p = deref(t, root, p)
				if get(p, "in") != nil && get(p, "in").Value == "path" {
					declared = append(declared, get(p, "name").Value)
					if r := get(p, "required"); r == nil || r.Value != "true" {
						t.Errorf("%s: path parameter %q must be required: true", where, get(p, "name").Value)
					}
				}
			}
		}
		_, path, _ := strings.Cut(op.route, " ")
		var inPath []string
		for _, m := range paramRE.FindAllString(path, -1) {
			inPath = append(inPath, strings.Trim(m, "{}"))
		}
		slices.Sort(declared)
		slices.Sort(inPath)
		if !slices.Equal(declared, inPath) {
			t.Errorf("%s: path parameters declared %v, path has %v", where, declared, inPath)
		}
	}
}

func TestNormRoute(t *testing.T) {
	for in, want := range map[string]string{
		"GET /api/v1/node/{id}":                  "GET /api/v1/node/{}",
		"post /api/v1/node/{nodeId}/rename/{n}":  "POST /api/v1/node/{}/rename/{}",
		"DELETE /api/v1/apikey/{prefix...}":      "DELETE /api/v1/apikey/{}",
		"GET /api/v1/user":                       "GET /api/v1/user",
		"POST /api/v1/user/{oldId}/rename/{new}": "POST /api/v1/user/{}/rename/{}",
	} {
		if got := normRoute(in); got != want {
			t.Errorf("normRoute(%q) = %q, want %q", in, got, want)
		}
	}
}
