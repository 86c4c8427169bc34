package store

// Tenancy on PostgreSQL: several tailnets (cluster_id values) in one
// database, each in a schema of its own. A store opened with
// PostgresOptions.Schema creates that schema when it is missing, migrates
// inside it, and refuses any connection whose search_path is not exactly
// that schema, so every unqualified table name resolves in the tenant's
// schema and nowhere else (no fallback to public). Names the store derives
// from the schema (the takeover's importing schema, application_name) keep
// tenants apart too. TestNoSchemaQualifiedNames checks that no statement
// escapes the search_path with a schema-qualified name; the postgres-tenant
// engine runs the store tests beside other tenants' rows.

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgtype"
)

// textArray scans a PostgreSQL array of names or text through
// database/sql.
type textArray []string

// Scan implements sql.Scanner.
func (a *textArray) Scan(src any) error {
	return pgtype.NewMap().SQLScanner((*[]string)(a)).Scan(src)
}

// tenantTables are every table of a tenant's schema except
// schema_migrations (each database keeps its own), in the order references
// allow: Copy and Import move them in this order, backups hold them, and
// the postgres-tenant test engine fills each of them in the other tenants'
// schemas. A migration that adds a table adds it here (TestCopyCoversSchema
// and TestNoSchemaQualifiedNames fail until it is), and to the other
// tenants' rows (otherTenantRows in engines_test.go).
var tenantTables = []string{"users", "pre_auth_keys", "nodes", "api_keys", "policies", "route_ids"}

// maxIdentLen is PostgreSQL's limit on an identifier's length, in bytes
// (NAMEDATALEN - 1); longer names are truncated by the server.
const maxIdentLen = 63

// derivedSchema names a schema that belongs to schema base: base, "$" and
// suffix. A cluster_id cannot hold "$", so the name is never another
// tenant's schema (headscale_<id>). When the name would exceed
// maxIdentLen, base is cut short and a hash of it added, so two bases
// still give two names.
func derivedSchema(base, suffix string) string {
	name := base + "$" + suffix
	if len(name) <= maxIdentLen {
		return name
	}
	sum := sha256.Sum256([]byte(base))
	tag := hex.EncodeToString(sum[:4])
	if len(suffix) > maxIdentLen/2 {
		suffix = suffix[:maxIdentLen/2]
	}
	keep := maxIdentLen - len(suffix) - len(tag) - 2
	return base[:keep] + "$" + tag + "$" + suffix
}

// tenantLabel is how application_name names a schema's tenant: the
// cluster_id of headscale_<cluster_id>, else the schema itself.
func tenantLabel(schema string) string {
	if id, ok := strings.CutPrefix(schema, "headscale_"); ok && id != "" {
		return id
	}
	return schema
}

// sessionName is the application_name of connections of kind app
// (ServerApplicationName, AdminApplicationName) to schema: app alone for
// the default schema, else app/<tenant>, cut to what the server keeps.
func sessionName(app, schema string) string {
	if schema != "" {
		app += "/" + tenantLabel(schema)
	}
	if len(app) > maxIdentLen {
		app = app[:maxIdentLen]
	}
	return app
}

// tenantGuard checks every new connection of a store with a schema: its
// search_path must be exactly that schema (as the startup parameter set
// it), and that schema the only one searched besides pg_catalog, so a
// table missing from it is an error, never another tenant's or public's
// table of that name. Until Open has made sure the schema exists (ready),
// a connection on which it does not exist yet is let through: Open creates
// the schema on it and checks it again.
type tenantGuard struct {
	schema string
	ready  atomic.Bool
}

// errSearchPath reports a connection whose search_path is not exactly the
// tenant's schema.
var errSearchPath = errors.New("the connection's search_path is not exactly the tenant's schema")

// check judges a connection's search_path setting and the schemas it
// resolves to (current_schemas(false)).
func (g *tenantGuard) check(setting string, schemas []string) error {
	want := quoteIdent(g.schema)
	switch {
	case setting == want && len(schemas) == 1 && schemas[0] == g.schema:
		return nil
	case setting == want && len(schemas) == 0 && !g.ready.Load():
		return nil // Open creates the schema on this connection
	}
	return fmt.Errorf("%w: it is %q, searching %q; want %s alone (a schema the role may not use is not searched: GRANT USAGE, CREATE ON SCHEMA %s to the role; a pooler must pass the search_path startup parameter through)",
		errSearchPath, setting, schemas, want, want)
}

// qSearchPath reads what tenantGuard.check judges.
const qSearchPath = `SELECT current_setting('search_path'), current_schemas(false)`

// ensureSchema creates g.schema, on the pool's first connection, when it
// does not exist (unless create is false: then that is an error), under
// the migration lock so that servers starting together do not race on it,
// checks that connection's search_path again and marks g ready. A role
// without the CREATE privilege on the database gets an error naming the
// GRANT to run.
func ensureSchema(ctx context.Context, db *sql.DB, g *tenantGuard, o PostgresOptions, create bool) error {
	schema := quoteIdent(g.schema)
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	var exists bool
	if err := conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, g.schema).Scan(&exists); err != nil {
		return fmt.Errorf("look for the schema %s: %w", schema, err)
	}
	if !exists && !create {
		return fmt.Errorf("the schema %s does not exist (a server with this cluster_id creates it)", schema)
	}
	if !exists {
		err := func() error {
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, postgresDialect.serialize["migrate"]); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
				return err
			}
			return tx.Commit()
		}()
		if pgCode(err) == "42501" { // insufficient_privilege
			var user, dbName string
			conn.QueryRowContext(ctx, `SELECT current_user, current_database()`).Scan(&user, &dbName)
			return fmt.Errorf("the schema %s does not exist and the role may not create it: run GRANT CREATE ON DATABASE %s TO %s (or, as an administrator, CREATE SCHEMA %s AUTHORIZATION %s): %w",
				schema, quoteIdent(dbName), quoteIdent(user), schema, quoteIdent(user), err)
		}
		if err != nil {
			return fmt.Errorf("create the schema %s: %w", schema, err)
		}
	}
	g.ready.Store(true)
	var setting string
	var schemas []string
	if err := conn.QueryRowContext(ctx, qSearchPath).Scan(&setting, (*textArray)(&schemas)); err != nil {
		return fmt.Errorf("read search_path: %w", err)
	}
	return g.check(setting, schemas)
}
