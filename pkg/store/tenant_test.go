package store

// The other tenants of the postgres-tenant engine, and tests of tenancy
// (tenant.go).

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/hsctl/headscale/pkg/ids"
)

// otherTenants are the schemas the postgres-tenant engine fills beside
// the tests' own ("" is the database's default schema, public, where a
// single server keeps its tables).
func otherTenants() []string { return []string{"headscale_t2", ""} }

// testTenant is the schema of t's store on the postgres-tenant engine:
// headscale_t1_ and a hash of the test's name, so tests sharing the
// database have a tenant each.
func testTenant(t *testing.T) string {
	sum := sha256.Sum256([]byte(t.Name()))
	return "headscale_t1_" + hex.EncodeToString(sum[:6])
}

// otherTenantSQL are statements run in each other tenant's schema after
// its rows were written through the store's API, for tables that API does
// not fill. A migration that adds a table adds a line here (the table must
// hold a row in every other tenant, or seedOtherTenants fails).
var otherTenantSQL = []string{
	// The cluster's runtime tables (runtimeTables), with the names a test
	// server would use.
	`UPDATE change_log_head SET seq = 3`,
	`INSERT INTO change_log (seq, origin, kind, node_id, user_id, data, at) VALUES
		(1, 'test/1', 'node', 12, 7, '{"v":1}', 1), (2, 'test/1', 'live', 12, NULL, '{"v":1}', 2), (3, '', 'policy', NULL, NULL, '{"v":1}', 3)`,
	`INSERT INTO cluster_servers (id, name, started_at, expires_at, applied_seq, version, noise_pub)
		VALUES ('test/1', 'test', 1, 9999999999999, 3, 'test', 'mkey:1'), ('a/1', 'a', 1, 9999999999999, 3, 'test', 'mkey:1')`,
	`INSERT INTO node_sessions (node_id, server_id, since) VALUES (12, 'test/1', 1)`,
	`INSERT INTO cluster_leases (name, holder, epoch, expires_at) VALUES ('jobs', 'test/1', 1, 9999999999999)`,
	`INSERT INTO route_primaries (prefix, node_id) VALUES ('10.0.0.0/24', 12)`,
	`INSERT INTO auth_requests (id, kind, data, created_at, expires_at)
		VALUES ('hskey-authreq-000000000000000000000001', 'registration', '{}', 1, 9999999999999)`,
}

// seedOtherTenants fills every other tenant's schema of the database o
// names with rows that collide with what the tests write (the same user
// names, node and machine keys, IPs, key prefixes and IDs), and checks
// that every table of tenantTables holds rows there. It runs once per
// test binary, in the template database the postgres-tenant engine's
// databases are copied from; it leaves no connection open.
func seedOtherTenants(t *testing.T, o PostgresOptions) {
	t.Helper()
	ctx := t.Context()
	for _, schema := range otherTenants() {
		so := o
		so.Schema = schema
		s, err := Open(ctx, Options{Postgres: &so})
		if err != nil {
			t.Fatalf("open the other tenant %q: %v", schema, err)
		}
		seedOtherTenant(t, s)
		for _, q := range otherTenantSQL {
			if _, err := s.write.ExecContext(ctx, q); err != nil {
				t.Fatalf("other tenant %q: %s: %v", schema, q, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	conn := connectTest(t, o)
	defer conn.Close(context.Background())
	for _, schema := range otherTenants() {
		for _, tb := range append(slices.Clone(tenantTables), runtimeTables...) {
			var n int
			if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM `+quoteIdent(orPublic(schema))+`.`+quoteIdent(tb)).Scan(&n); err != nil || n == 0 {
				t.Fatalf("table %s is empty in the other tenant %q (%v): give it rows in seedOtherTenant or otherTenantSQL", tb, schema, err)
			}
		}
	}
}

// watchOtherTenants returns t's tenant (testTenant), dropped when the test
// ends, and makes the test fail if then any other tenant's schema of the
// database o names differs from what it is now: every table's rows, the
// set of tables, and every sequence (checksums).
func watchOtherTenants(t *testing.T, o PostgresOptions) string {
	t.Helper()
	conn := connectTest(t, o)
	t.Cleanup(func() { conn.Close(context.Background()) })
	before := tenantChecksums(t, conn)
	schema := testTenant(t)
	t.Cleanup(func() {
		after := tenantChecksums(t, conn)
		for schema, tables := range before {
			for tb, sum := range tables {
				if after[schema][tb] != sum {
					t.Errorf("the other tenant %q changed: %s was %s, is %s", schema, tb, sum, after[schema][tb])
				}
			}
			for tb := range after[schema] {
				if _, ok := tables[tb]; !ok {
					t.Errorf("the other tenant %q changed: %s appeared", schema, tb)
				}
			}
		}
	})
	// Runs first, after the test's stores closed.
	t.Cleanup(func() {
		if _, err := conn.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+quoteIdent(schema)+` CASCADE`); err != nil {
			t.Errorf("drop the test's tenant: %v", err)
		}
	})
	return schema
}

func orPublic(schema string) string {
	if schema == "" {
		return "public"
	}
	return schema
}

// seedOtherTenant writes through s rows like the tests': importData's
// (a row in every table, with the IDs TestImport uses: user 7 alice, node
// 12 with 100.64.0.1 and mkey:1), then users, nodes, keys and a policy
// under the names and values the tests use most.
func seedOtherTenant(t *testing.T, s *Store) {
	t.Helper()
	ctx := t.Context()
	fill(t, s)
	var uid ids.UserID
	for _, name := range []string{"bob", "carol", "a", "x", "other"} {
		u, err := s.CreateUser(ctx, User{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		uid = u.ID
	}
	if _, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "p", Hash: []byte{1}, UserID: &uid, Reusable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "dup", Hash: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAPIKey(ctx, APIKey{Prefix: "dup", Hash: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	var keys []RouteKey
	for i, name := range []string{"a", "b", "0", "2", "n0", "n1"} {
		n := testNode(name, &uid)
		n.IPv4, n.IPv6 = fmt.Sprintf("100.64.0.%d", i+2), fmt.Sprintf("fd7a:115c:a1e0::%d", i+2)
		got, err := s.RegisterNode(ctx, n, 0)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, RouteKey{NodeID: got.ID, Prefix: netip.MustParsePrefix("10.0.0.0/24")})
	}
	if err := s.AddRouteIDs(ctx, keys); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPolicy(ctx, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`); err != nil {
		t.Fatal(err)
	}
}

// connectTest connects to the database o names, outside any store, for
// checks of the whole database.
func connectTest(t *testing.T, o PostgresOptions) *pgx.Conn {
	t.Helper()
	o.Schema = ""
	cfg, err := o.pgxConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "store-test"
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// tenantChecksums is, per other tenant (otherTenants) and per table and
// sequence of its schema, its row count and an MD5 over its rows in text
// form (a sequence's row holds its last value), read in one query.
func tenantChecksums(t *testing.T, conn *pgx.Conn) map[string]map[string]string {
	t.Helper()
	var schemas []string
	for _, s := range otherTenants() {
		schemas = append(schemas, orPublic(s))
	}
	rows, err := conn.Query(context.Background(), `SELECT n.nspname, c.relname,
	md5(CAST(query_to_xml(format('SELECT * FROM %I.%I ORDER BY 1', n.nspname, c.relname), false, false, '') AS text))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'S')`, schemas)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, s := range schemas {
		out[s] = map[string]string{}
	}
	var schema, rel, sum string
	_, err = pgx.ForEachRow(rows, []any{&schema, &rel, &sum}, func() error {
		out[schema][rel] = sum
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSearchPathIsTenantOnly opens a tenant's store, by key/value settings
// and by URL, in a database whose other tenants (public and headscale_t2)
// hold rows: every pool connection, all open at once, searches exactly the
// tenant's schema; no read returns another tenant's row; a table missing
// from the tenant's schema is an error, not public's table; and a schema
// whose name differs only in case is another tenant.
func TestSearchPathIsTenantOnly(t *testing.T) {
	for _, form := range []string{"keyvalue", "url"} {
		t.Run(form, func(t *testing.T) {
			ctx := t.Context()
			db := pg.Database(t)
			base := PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}
			seedOtherTenants(t, base)
			open := func(schema string) *Store {
				t.Helper()
				o := base
				if form == "url" {
					var err error
					if o, err = ParsePostgresURL(fmt.Sprintf("postgres:///%s?host=%s&port=%d&user=%s&search_path=public", db.Name, db.Host, db.Port, db.User)); err != nil {
						t.Fatal(err)
					}
				}
				o.Schema, o.MaxOpenConns = schema, 4
				s, err := Open(ctx, Options{Postgres: &o})
				if err != nil {
					t.Fatalf("Open %s: %v", schema, err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			}
			s := open("headscale_T1")

			// Every connection of the pool, held at once.
			var conns []*sql.Conn
			for range 4 {
				c, err := s.read.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			for i, c := range conns {
				var path, current string
				var schemas []string
				if err := c.QueryRowContext(ctx, `SELECT current_setting('search_path'), current_schemas(false), current_schema()`).Scan(&path, (*textArray)(&schemas), &current); err != nil {
					t.Fatal(err)
				}
				if path != `"headscale_T1"` || len(schemas) != 1 || schemas[0] != "headscale_T1" || current != "headscale_T1" {
					t.Errorf("connection %d: search_path %q, schemas %q, current %q; want headscale_T1 alone", i, path, schemas, current)
				}
			}
			var sessions int
			if err := conns[0].QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'headscale/T1'`).Scan(&sessions); err != nil || sessions != 4 {
				t.Errorf("%d sessions named headscale/T1 (%v), want the 4 of the pool", sessions, err)
			}
			for _, c := range conns {
				c.Close()
			}

			// The other tenants' rows (alice, user 7, node 12 with
			// nodekey:1, keys p1/p/dup, a policy, route 21) are not read.
			must := func(what string, n int, err error) {
				t.Helper()
				if err != nil || n != 0 {
					t.Errorf("%s: %d rows, %v; want none", what, n, err)
				}
			}
			users, err := s.ListUsers(ctx)
			must("ListUsers", len(users), err)
			nodes, err := s.ListNodes(ctx)
			must("ListNodes", len(nodes), err)
			keys, err := s.ListPreAuthKeys(ctx)
			must("ListPreAuthKeys", len(keys), err)
			apiKeys, err := s.ListAPIKeys(ctx)
			must("ListAPIKeys", len(apiKeys), err)
			routes, err := s.ListRouteIDs(ctx)
			must("ListRouteIDs", len(routes), err)
			for what, err := range map[string]error{
				"GetUserByName alice": second(s.GetUserByName(ctx, "alice")),
				"GetUser 7":           second(s.GetUser(ctx, 7)),
				"GetNode 12":          second(s.GetNode(ctx, 12)),
				"GetPreAuthKey p1":    second(s.GetPreAuthKeyByPrefix(ctx, "p1")),
				"GetAPIKey a1":        second(s.GetAPIKeyByPrefix(ctx, "a1")),
				"GetRouteID 21":       second(s.GetRouteID(ctx, 21)),
			} {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: %v, want ErrNotFound", what, err)
				}
			}
			if p, _, err := s.GetPolicy(ctx); p != "" || (err != nil && !errors.Is(err, ErrNotFound)) {
				t.Errorf("GetPolicy = %q, %v; want none", p, err)
			}
			// Names, IPs and keys repeat across tenants.
			u, err := s.CreateUser(ctx, User{Name: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			n := testNode("1", &u.ID)
			n.IPv4 = "100.64.0.1"
			if _, err := s.RegisterNode(ctx, n, 0); err != nil {
				t.Fatalf("a node with another tenant's keys and IP: %v", err)
			}

			// A schema differing only in case is another tenant.
			lower := open("headscale_t1")
			if users, err := lower.ListUsers(ctx); err != nil || len(users) != 0 {
				t.Errorf("headscale_t1 sees %d users (%v), want none of headscale_T1's", len(users), err)
			}

			// No fallback: with route_ids gone from the tenant's schema,
			// public's route_ids is not read in its place.
			if err := pg.Exec(ctx, db.Name, `DROP TABLE "headscale_T1".route_ids`); err != nil {
				t.Fatal(err)
			}
			if routes, err := s.ListRouteIDs(ctx); err == nil {
				t.Errorf("ListRouteIDs without the tenant's table = %v, want an error (not public's rows)", routes)
			}
		})
	}
}

// second returns the error of a (value, error) pair.
func second[T any](_ T, err error) error { return err }

// TestTenantGuard: the search_path check refuses anything but the
// tenant's schema alone, and lets a missing schema through only until Open
// has created it.
func TestTenantGuard(t *testing.T) {
	for _, tc := range []struct {
		setting string
		schemas []string
		ready   bool
		ok      bool
	}{
		{`"headscale_a"`, []string{"headscale_a"}, true, true},
		{`"headscale_a"`, nil, false, true},
		{`"headscale_a"`, nil, true, false},
		{`"headscale_a", public`, []string{"headscale_a", "public"}, true, false},
		{`"headscale_a", public`, []string{"headscale_a"}, true, false},
		{`headscale_a`, []string{"headscale_a"}, true, false},
		{`"$user", public`, []string{"public"}, false, false},
		{`"headscale_a"`, []string{"public"}, false, false},
		{`"headscale_A"`, []string{"headscale_A"}, true, false},
	} {
		g := &tenantGuard{schema: "headscale_a"}
		g.ready.Store(tc.ready)
		if err := g.check(tc.setting, tc.schemas); (err == nil) != tc.ok || (err != nil && !errors.Is(err, errSearchPath)) {
			t.Errorf("check(%q, %q, ready %v) = %v, want ok %v", tc.setting, tc.schemas, tc.ready, err, tc.ok)
		}
	}
}

// TestTenantPrivileges: a role that may not create the tenant's schema is
// told the GRANT to run; a schema it may not use is refused by the
// search_path check; with the grants it opens.
func TestTenantPrivileges(t *testing.T) {
	ctx := t.Context()
	db := pg.Database(t)
	const role = "tenant_no_create"
	if err := pg.Exec(ctx, "", `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '`+role+`') THEN CREATE ROLE `+role+` LOGIN; END IF; END $$`); err != nil {
		t.Fatal(err)
	}
	o := PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: role, Schema: "headscale_np"}
	_, err := Open(ctx, Options{Postgres: &o})
	if want := `GRANT CREATE ON DATABASE "` + db.Name + `" TO "` + role + `"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open without CREATE: %v, want the error to say %q", err, want)
	}
	if err := pg.Exec(ctx, db.Name, `CREATE SCHEMA headscale_np`); err != nil {
		t.Fatal(err)
	}
	if _, err = Open(ctx, Options{Postgres: &o}); !errors.Is(err, errSearchPath) || !strings.Contains(err.Error(), "GRANT USAGE, CREATE ON SCHEMA") {
		t.Fatalf("Open without USAGE on the schema: %v, want the search_path refusal", err)
	}
	if err := pg.Exec(ctx, db.Name, `GRANT USAGE, CREATE ON SCHEMA headscale_np TO `+role); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{Postgres: &o})
	if err != nil {
		t.Fatalf("Open with the grants: %v", err)
	}
	s.Close()
}

// TestOpenIdleTenants: OpenIdle refuses while a server of the same tenant
// has the database open, and not for a server of another tenant or of the
// default schema.
func TestOpenIdleTenants(t *testing.T) {
	ctx := t.Context()
	db := pg.Database(t)
	opts := func(schema string) Options {
		return Options{Postgres: &PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User, Schema: schema}}
	}
	for _, schema := range []string{"", "headscale_a"} {
		s, err := Open(ctx, opts(schema))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for schema, want := range map[string]error{"": ErrInUse, "headscale_a": ErrInUse, "headscale_b": nil} {
		idle, err := OpenIdle(ctx, opts(schema))
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("OpenIdle(%q) = %v, want %v", schema, err, want)
		}
		if idle != nil {
			idle.Close()
		}
	}
}

// TestDerivedSchemas: names derived from a tenant's schema stay within
// PostgreSQL's 63 bytes, differ per tenant, and never take the form of a
// tenant's schema (headscale_<cluster_id>, which has no "$").
func TestDerivedSchemas(t *testing.T) {
	long := "headscale_" + strings.Repeat("x", 40)
	for _, tc := range []struct{ got, want string }{
		{importingSchema("public"), "public$importing"},
		{importingSchema("headscale_a"), "headscale_a$importing"},
		{importingSchema(long), long + "$importing"},
		{KeepSchema("", "v0.27.1"), "headscale_v0_27_1"},
		{KeepSchema("headscale_a", "v0.27.1"), "headscale_a$v0_27_1"},
		{sessionName(ServerApplicationName, ""), "headscale"},
		{sessionName(ServerApplicationName, "headscale_a"), "headscale/a"},
		{sessionName(AdminApplicationName, long), "headscale-admin/" + strings.Repeat("x", 40)},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	seen := map[string]bool{}
	for _, base := range []string{long, long + "y", long + "z", strings.Repeat("y", 63)} {
		for _, suffix := range []string{"importing", "v0_28_0_beta_1", strings.Repeat("v", 80)} {
			name := derivedSchema(base, suffix)
			if len(name) > maxIdentLen || !strings.Contains(name, "$") || seen[name] {
				t.Errorf("derivedSchema(%q, %q) = %q: too long, without $, or not unique", base, suffix, name)
			}
			seen[name] = true
		}
	}
}
