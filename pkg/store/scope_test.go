package store

// The static half of the tenancy proof: a statement can reach another
// tenant's rows only by naming a schema (the search_path is the tenant's
// alone, see tenant.go), so no SQL of the store may name one, and every
// table it names must be in tenantTables, which the postgres-tenant engine
// fills in the other tenants' schemas.

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// scopeAllowed are the schema-qualified names and tables the check lets
// through, each with the reason, by file (a base name, or a migration's
// path) and the name as the check sees it (⟨expression⟩ stands for a
// value computed at run time).
var scopeAllowed = []struct{ file, name, reason string }{
	{"pgtakeover.go", "⟨quoteIdent(current)⟩.⟨quoteIdent(t)⟩",
		"the takeover moves the tables of the schema being taken over (the tenant's) into the kept copy"},
	{"pgtakeover.go", "⟨quoteIdent(importing)⟩.⟨quoteIdent(t)⟩",
		"the takeover moves the converted tables from the tenant's importing schema into the tenant's"},
	{"migrations/0006_node_per_user.sql", "temp.route_ids_0006",
		"SQLite's connection-private temp schema, in the SQLite-only block"},
}

// scopeSystemTables are the catalogs and bookkeeping tables SQL may name
// besides tenantTables: they describe the database or the current schema,
// and hold no tenant's rows (schema_migrations is each schema's own).
var scopeSystemTables = []string{"schema_migrations", "pg_stat_activity", "pg_namespace", "pg_tables", "pg_indexes",
	"pg_sequences", "sqlite_master", "sqlite_sequence", "information_schema.tables"}

// scopeSystemSchemas may qualify a name: PostgreSQL's catalogs.
var scopeSystemSchemas = []string{"pg_catalog", "information_schema"}

var (
	// sqlMarker: a string holding one of these words (upper case, as the
	// store writes SQL) is checked as SQL.
	sqlMarker = regexp.MustCompile(`\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|LOCK|TRUNCATE|FROM|JOIN|INTO|TABLE)\b`)
	// sqlIdent is an identifier: plain, quoted, or a run-time value.
	sqlIdent = `(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"|⟨[^⟩]*⟩)`
	// sqlQualified is ident.ident (or ident.*).
	sqlQualified = regexp.MustCompile(`(` + sqlIdent + `)\.(` + sqlIdent + `|\*)`)
	// sqlTableRef is a table named after a keyword, with what follows it
	// (an alias, or "(" making it a function call after FROM or JOIN).
	sqlTableRef = regexp.MustCompile(`(?i)\b(FROM|JOIN|INTO|UPDATE|TABLE|REFERENCES)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+|ONLY\s+)?(` +
		sqlIdent + `(?:\.` + sqlIdent + `)?)(\s*\()?(?:\s+(?:AS\s+)?(` + sqlIdent + `))?`)
	// sqlCTE names a common table expression.
	sqlCTE = regexp.MustCompile(`(?i)(?:\bWITH\s+(?:RECURSIVE\s+)?|,\s*)(` + sqlIdent + `)\s+AS\s*\(`)
	// sqlSetPath changes the search_path inside a session.
	sqlSetPath = regexp.MustCompile(`(?i)\bSET\s+(?:SESSION\s+|LOCAL\s+)?search_path\b|set_config\s*\(\s*'search_path'`)
	// sqlComment and sqlString are removed before the checks (a string
	// is kept when it looks like a qualified name: 'public.nodes').
	sqlComment = regexp.MustCompile(`--[^\n]*`)
	sqlString  = regexp.MustCompile(`'(?:[^']|'')*'`)
	sqlVerb    = regexp.MustCompile(`%[-+# 0-9.]*[sqvd]`)
	sqlHole    = regexp.MustCompile(`⟨[^⟩]*⟩`)
)

// checkSQL returns what is wrong with one SQL text of file: schema-
// qualified names and tables outside tenantTables (unless tablesToo is
// false), and search_path changes.
func checkSQL(file, text string, tablesToo bool) []string {
	allowed := func(name string) bool {
		return slices.ContainsFunc(scopeAllowed, func(a struct{ file, name, reason string }) bool {
			return a.file == file && a.name == name
		})
	}
	text = sqlComment.ReplaceAllString(text, "")
	var bad []string
	if sqlSetPath.MatchString(text) {
		bad = append(bad, "changes the search_path: "+sqlSetPath.FindString(text))
	}
	text = sqlString.ReplaceAllStringFunc(text, func(s string) string {
		if sqlQualified.MatchString(s) {
			return s[1 : len(s)-1]
		}
		return "''"
	})
	// A printf verb is a name computed at run time. Run-time names
	// become ⟨n⟩ while the text is read (their source may hold dots) and
	// are put back in what is reported.
	text = sqlVerb.ReplaceAllString(text, "⟨$0⟩")
	var holes []string
	text = sqlHole.ReplaceAllStringFunc(text, func(h string) string {
		holes = append(holes, h)
		return "⟨" + strconv.Itoa(len(holes)-1) + "⟩"
	})
	expand := func(s string) string {
		return sqlHole.ReplaceAllStringFunc(s, func(h string) string {
			i, err := strconv.Atoi(h[len("⟨") : len(h)-len("⟩")])
			if err != nil || i >= len(holes) {
				return h
			}
			return holes[i]
		})
	}
	// Names that may qualify a column: tables, their aliases, CTEs.
	local := map[string]bool{"excluded": true}
	for _, m := range sqlCTE.FindAllStringSubmatch(text, -1) {
		local[unquoteIdent(m[1])] = true
	}
	for _, m := range sqlTableRef.FindAllStringSubmatch(text, -1) {
		kw, name, call, alias := strings.ToUpper(m[1]), m[2], m[3] != "", m[4]
		if call && (kw == "FROM" || kw == "JOIN") {
			continue // a function: FROM unnest($1)
		}
		if alias != "" {
			local[unquoteIdent(alias)] = true
		}
		local[unquoteIdent(name)] = true
		if !tablesToo || strings.HasPrefix(name, "⟨") || isCTE(text, name) || strings.EqualFold(name, "SET") {
			continue
		}
		if strings.Contains(name, ".") {
			continue // judged as a qualified name below
		}
		t := unquoteIdent(name)
		if !slices.Contains(tenantTables, t) && !slices.Contains(runtimeTables, t) && !slices.Contains(scopeSystemTables, t) && !allowed(t) {
			bad = append(bad, "names the table "+t+", which is not in tenantTables or runtimeTables (add it there, and rows for it to the other tenants of the postgres-tenant engine)")
		}
	}
	for _, m := range sqlQualified.FindAllStringSubmatch(text, -1) {
		q, name := unquoteIdent(m[1]), expand(m[0])
		switch {
		case slices.Contains(scopeSystemSchemas, q), local[q] && !strings.HasPrefix(m[1], "⟨"),
			slices.Contains(scopeSystemTables, name), allowed(name):
			continue
		}
		bad = append(bad, "names the schema-qualified "+name+" (a tenant's queries must resolve through its search_path alone)")
	}
	return bad
}

// isCTE reports whether name is defined by a WITH of text.
func isCTE(text, name string) bool {
	for _, m := range sqlCTE.FindAllStringSubmatch(text, -1) {
		if unquoteIdent(m[1]) == unquoteIdent(name) {
			return true
		}
	}
	return false
}

func unquoteIdent(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return s
}

// goSQL returns every string of a Go file that reads as SQL (see
// sqlMarker), with package constants put in and other operands of "+" as
// ⟨their source⟩: each literal, constant and concatenation, taken whole.
func goSQL(f *ast.File, consts map[string]string) []string {
	var eval func(e ast.Expr) (string, bool)
	eval = func(e ast.Expr) (string, bool) {
		switch x := e.(type) {
		case *ast.BasicLit:
			if x.Kind == token.STRING {
				s, err := strconv.Unquote(x.Value)
				return s, err == nil
			}
		case *ast.Ident:
			if v, ok := consts[x.Name]; ok {
				return v, true
			}
		case *ast.ParenExpr:
			return eval(x.X)
		case *ast.BinaryExpr:
			if x.Op == token.ADD {
				l, lok := eval(x.X)
				r, rok := eval(x.Y)
				return l + r, lok || rok
			}
		}
		return "⟨" + exprString(e) + "⟩", false
	}
	inChain := map[ast.Node]bool{}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		e, ok := n.(ast.Expr)
		if !ok || inChain[n] {
			if ok {
				if b, isBin := n.(*ast.BinaryExpr); isBin {
					inChain[b.X], inChain[b.Y] = true, true
				}
			}
			return true
		}
		switch x := e.(type) {
		case *ast.BasicLit, *ast.BinaryExpr:
			if b, isBin := x.(*ast.BinaryExpr); isBin {
				if b.Op != token.ADD {
					return true
				}
				inChain[b.X], inChain[b.Y] = true, true
			}
			if s, lit := eval(e); lit && sqlMarker.MatchString(s) {
				out = append(out, s)
			}
		}
		return true
	})
	return out
}

// exprString is a short source form of e for ⟨...⟩.
func exprString(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		return exprString(x.X) + "." + x.Sel.Name
	case *ast.IndexExpr:
		return exprString(x.X) + "[" + exprString(x.Index) + "]"
	case *ast.CallExpr:
		var args []string
		for _, a := range x.Args {
			args = append(args, exprString(a))
		}
		return exprString(x.Fun) + "(" + strings.Join(args, ", ") + ")"
	case *ast.BasicLit:
		return x.Value
	case *ast.BinaryExpr:
		return exprString(x.X) + " " + x.Op.String() + " " + exprString(x.Y)
	case *ast.ParenExpr:
		return "(" + exprString(x.X) + ")"
	}
	return "?"
}

// packageConsts evaluates the string constants of files (a constant made
// of other constants and literals with "+").
func packageConsts(files []*ast.File) map[string]string {
	exprs := map[string]ast.Expr{}
	for _, f := range files {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						exprs[name.Name] = vs.Values[i]
					}
				}
			}
		}
	}
	consts := map[string]string{}
	var eval func(e ast.Expr, depth int) (string, bool)
	eval = func(e ast.Expr, depth int) (string, bool) {
		switch x := e.(type) {
		case *ast.BasicLit:
			if x.Kind == token.STRING {
				s, err := strconv.Unquote(x.Value)
				return s, err == nil
			}
		case *ast.Ident:
			if d, ok := exprs[x.Name]; ok && depth < 20 {
				return eval(d, depth+1)
			}
		case *ast.ParenExpr:
			return eval(x.X, depth)
		case *ast.BinaryExpr:
			if x.Op == token.ADD {
				l, lok := eval(x.X, depth)
				r, rok := eval(x.Y, depth)
				return l + r, lok && rok
			}
		}
		return "", false
	}
	for name, e := range exprs {
		if v, ok := eval(e, 0); ok {
			consts[name] = v
		}
	}
	return consts
}

// parseGoSQL parses the non-test Go files of dir and returns their SQL by
// file base name.
func parseGoSQL(t *testing.T, dir string) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	var files []*ast.File
	var names []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		names = append(names, e.Name())
	}
	consts := packageConsts(files)
	out := map[string][]string{}
	for i, f := range files {
		out[names[i]] = goSQL(f, consts)
	}
	return out
}

// TestNoSchemaQualifiedNames: no SQL of the store (Go files, migrations)
// names a schema, except PostgreSQL's catalogs and scopeAllowed, or
// changes the search_path; and every table the Go files' SQL names is in
// tenantTables (or a catalog; a migration's tables are held to
// tenantTables by TestCopyCoversSchema). A new query that escapes the tenant, or a
// new table the two-tenant tests would not cover, fails here.
func TestNoSchemaQualifiedNames(t *testing.T) {
	dirs := []string{"."}
	if _, err := os.Stat("../cluster"); err == nil {
		dirs = append(dirs, "../cluster")
	}
	statements := 0
	texts := map[string]string{} // every SQL text by file, for stale scopeAllowed entries
	for _, dir := range dirs {
		byFile := parseGoSQL(t, dir)
		files := make([]string, 0, len(byFile))
		for f := range byFile {
			files = append(files, f)
		}
		sort.Strings(files)
		for _, file := range files {
			for _, q := range byFile[file] {
				statements++
				texts[file] += q + "\n"
				for _, b := range checkSQL(file, q, true) {
					t.Errorf("%s: %s:\n\t%s", filepath.Join(dir, file), b, q)
				}
			}
		}
	}
	if statements < 50 {
		t.Errorf("found %d SQL strings in the store's Go files; the parser misses them", statements)
	}
	err := fs.WalkDir(migrationFS, "migrations", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := migrationFS.ReadFile(path)
		if err != nil {
			return err
		}
		texts[path] += string(body)
		for _, b := range checkSQL(path, string(body), false) {
			t.Errorf("%s: %s", path, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range scopeAllowed {
		if a.reason == "" {
			t.Errorf("scopeAllowed entry %s in %s has no reason", a.name, a.file)
		}
		if !strings.Contains(texts[a.file], a.name) {
			t.Errorf("scopeAllowed entry %s in %s is not used any more: remove it", a.name, a.file)
		}
	}
}

// TestScopeCheckerCatches: the checker of TestNoSchemaQualifiedNames
// finds what it must and lets the store's forms through.
func TestScopeCheckerCatches(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want string // "" = nothing wrong
	}{
		{`SELECT id FROM nodes WHERE id = $1`, ""},
		{`SELECT n.id, u.name FROM nodes n JOIN users AS u ON u.id = n.user_id`, ""},
		{`SELECT nodes.id FROM nodes`, ""},
		{`INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name`, ""},
		{`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, ""},
		{`SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`, ""},
		{`SELECT x FROM unnest($1) AS x`, ""},
		{`WITH recent AS (SELECT id FROM nodes) SELECT recent.id FROM recent`, ""},
		{`SELECT id FROM nodes -- not public.nodes`, ""},
		{`SELECT * FROM public.nodes`, "schema-qualified public.nodes"},
		{`SELECT id FROM "headscale_b".users`, `schema-qualified "headscale_b".users`},
		{`SELECT n.id FROM headscale_b.nodes n`, "schema-qualified headscale_b.nodes"},
		{`UPDATE public.users SET name = $1`, "schema-qualified public.users"},
		{`SELECT pg_get_serial_sequence('public.nodes', 'id')`, "schema-qualified public.nodes"},
		{`SELECT * FROM accounts`, "names the table accounts"},
		{`INSERT INTO change_feed (seq) VALUES ($1)`, "names the table change_feed"},
		{`SET search_path = public`, "changes the search_path"},
		{`SELECT set_config('search_path', 'public', false)`, "changes the search_path"},
	} {
		bad := checkSQL("queries.go", tc.sql, true)
		switch {
		case tc.want == "" && len(bad) > 0:
			t.Errorf("%s: %q, want nothing wrong", tc.sql, bad)
		case tc.want != "" && !slices.ContainsFunc(bad, func(b string) bool { return strings.Contains(b, tc.want) }):
			t.Errorf("%s: %q, want %q", tc.sql, bad, tc.want)
		}
	}

	// Go source: constants, concatenation and run-time names.
	src := `package store
const cols = "id, name"
const qOK = "SELECT " + cols + " FROM users"
const schema = "public"
const qBad = "SELECT " + cols + " FROM " + schema + ".users"
func f(s, t string) {
	run("ALTER TABLE " + quoteIdent(s) + "." + quoteIdent(t) + " SET SCHEMA x")
	run("SELECT * FROM " + t + " ORDER BY id")
	run(fmt.Sprintf("DELETE FROM %s.nodes", s))
}`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range goSQL(f, packageConsts([]*ast.File{f})) {
		got = append(got, checkSQL("x.go", q, true)...)
	}
	for _, want := range []string{"schema-qualified public.users", "schema-qualified ⟨quoteIdent(s)⟩.⟨quoteIdent(t)⟩", "schema-qualified ⟨%s⟩.nodes"} {
		if !slices.ContainsFunc(got, func(b string) bool { return strings.Contains(b, want) }) {
			t.Errorf("Go source: found %q, want one saying %q", got, want)
		}
	}
	if len(got) != 3 {
		t.Errorf("Go source: %d findings %q, want 3 (the dynamic table of SELECT * FROM t is allowed)", len(got), got)
	}
}
