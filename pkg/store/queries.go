package store

// Every SQL statement the store runs lives in this file, and both engines
// run them unchanged. Placeholders are PostgreSQL-style positional ($1, $2,
// ...): modernc.org/sqlite binds them by ordinal (see
// TestPositionalPlaceholders), so no rebinding is needed. Statements that
// only make sense on one engine live in sqlite.go and postgres.go, and the
// few pieces that differ in dialect.go.

const (
	qPing = `SELECT COUNT(*) FROM schema_migrations` // reads the file, unlike SELECT 1

	qCreateMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER NOT NULL PRIMARY KEY,
	name       TEXT    NOT NULL,
	applied_at BIGINT  NOT NULL
)`
	qSchemaVersion   = `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`
	qInsertMigration = `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`
)

// Users.
const (
	userCols = `id, name, display_name, email, profile_pic_url, provider, provider_id, provider_groups, created_at, version`

	qInsertUser = `INSERT INTO users (name, display_name, email, profile_pic_url, provider, provider_id, provider_groups, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING ` + userCols
	qGetUserByProvider  = `SELECT ` + userCols + ` FROM users WHERE provider = $1 AND provider_id = $2 ORDER BY id LIMIT 1`
	qUpdateUserIdentity = `UPDATE users SET display_name = $1, email = $2, profile_pic_url = $3, provider = $4, provider_id = $5, provider_groups = $6,
version = version + 1 WHERE id = $7 RETURNING ` + userCols
	qSetUserGroups = `UPDATE users SET provider_groups = $1, version = version + 1 WHERE id = $2 RETURNING ` + userCols
	qGetUser       = `SELECT ` + userCols + ` FROM users WHERE id = $1`
	qGetUserByName = `SELECT ` + userCols + ` FROM users WHERE name = $1`
	qListUsers     = `SELECT ` + userCols + ` FROM users ORDER BY id`
	qRenameUser    = `UPDATE users SET name = $1, version = version + 1 WHERE id = $2 RETURNING ` + userCols
	// qLockUser is completed with the dialect's forUpdate: on PostgreSQL a
	// node registered for the user meanwhile waits for the delete (and
	// then fails) instead of slipping in between count and delete.
	qLockUser       = `SELECT id FROM users WHERE id = $1`
	qCountUserNodes = `SELECT COUNT(*) FROM nodes WHERE user_id = $1`
	qDeleteUserKeys = `DELETE FROM pre_auth_keys WHERE user_id = $1`
	qDeleteUser     = `DELETE FROM users WHERE id = $1`
)

// Pre-auth keys.
const (
	preAuthKeyCols = `id, prefix, hash, user_id, reusable, ephemeral, used, tags, expiration, created_at, legacy`

	qInsertPreAuthKey = `INSERT INTO pre_auth_keys (prefix, hash, user_id, reusable, ephemeral, used, tags, expiration, created_at, legacy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING ` + preAuthKeyCols
	qGetPreAuthKey         = `SELECT ` + preAuthKeyCols + ` FROM pre_auth_keys WHERE id = $1`
	qGetPreAuthKeyByPrefix = `SELECT ` + preAuthKeyCols + ` FROM pre_auth_keys WHERE prefix = $1`
	qListPreAuthKeys       = `SELECT ` + preAuthKeyCols + ` FROM pre_auth_keys ORDER BY id`
	qExpirePreAuthKey      = `UPDATE pre_auth_keys SET expiration = $1 WHERE id = $2`
	qDeletePreAuthKey      = `DELETE FROM pre_auth_keys WHERE id = $1`
	// qUsePreAuthKey flips used only if it was unset, so at most one
	// transaction can ever see one affected row for a given key.
	qUsePreAuthKey    = `UPDATE pre_auth_keys SET used = TRUE WHERE id = $1 AND used = FALSE`
	qPreAuthKeyExists = `SELECT COUNT(*) FROM pre_auth_keys WHERE id = $1`
	// qRehashPreAuthKey replaces a key's hash only if it is still the one
	// that was checked, so a concurrent change is never overwritten.
	qRehashPreAuthKey = `UPDATE pre_auth_keys SET hash = $1 WHERE id = $2 AND hash = $3`
)

// Nodes.
const (
	nodeCols = `id, machine_key, node_key, disco_key, endpoints, hostinfo, ipv4, ipv6, hostname, given_name,
user_id, register_method, tags, auth_key_id, ephemeral, last_seen, expiry, approved_routes, approved, created_at, updated_at, version`

	qInsertNode = `INSERT INTO nodes (machine_key, node_key, disco_key, endpoints, hostinfo, ipv4, ipv6, hostname, given_name,
user_id, register_method, tags, auth_key_id, ephemeral, last_seen, expiry, approved_routes, approved, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
RETURNING ` + nodeCols
	// qNodeSet rewrites everything except id, created_at and version.
	qNodeSet = `UPDATE nodes SET machine_key = $1, node_key = $2, disco_key = $3, endpoints = $4, hostinfo = $5,
ipv4 = $6, ipv6 = $7, hostname = $8, given_name = $9, user_id = $10, register_method = $11, tags = $12,
auth_key_id = $13, ephemeral = $14, last_seen = $15, expiry = $16, approved_routes = $17, approved = $18, updated_at = $19`
	// qUpdateNode is the periodic write of what the server keeps in
	// memory (endpoints, host info, last seen): not a new version.
	qUpdateNode = qNodeSet + `
WHERE id = $20`
	// qEditNode is an edit or a registration: a new version of the row.
	qEditNode = qNodeSet + `, version = version + 1
WHERE id = $20`
	// qEditNodeReturning is qEditNode returning the row as stored (for
	// the change log).
	qEditNodeReturning = qEditNode + `
RETURNING ` + nodeCols
	// qEditNodeIfVersion is qEditNode only if the row is still at version
	// $21 (compare-and-swap).
	qEditNodeIfVersion = qEditNode + ` AND version = $21
RETURNING ` + nodeCols
	qNodeExists = `SELECT COUNT(*) FROM nodes WHERE id = $1`
	// qUnlinkKeyNodes and qUnlinkUserKeyNodes clear the pre-auth key of
	// the nodes registered with key $1, or with any key of user $1, ahead
	// of deleting the keys (change log on).
	qUnlinkKeyNodes     = `UPDATE nodes SET auth_key_id = NULL, version = version + 1 WHERE auth_key_id = $1 RETURNING ` + nodeCols
	qUnlinkUserKeyNodes = `UPDATE nodes SET auth_key_id = NULL, version = version + 1
WHERE auth_key_id IN (SELECT id FROM pre_auth_keys WHERE user_id = $1) RETURNING ` + nodeCols
	qGetNode     = `SELECT ` + nodeCols + ` FROM nodes WHERE id = $1`
	qListNodes   = `SELECT ` + nodeCols + ` FROM nodes ORDER BY id`
	qDeleteNode  = `DELETE FROM nodes WHERE id = $1`
	qSetLastSeen = `UPDATE nodes SET last_seen = $1 WHERE id = $2`
)

// API keys.
const (
	apiKeyCols = `id, prefix, hash, expiration, last_seen, created_at`

	qInsertAPIKey = `INSERT INTO api_keys (prefix, hash, expiration, last_seen, created_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING ` + apiKeyCols
	qGetAPIKey         = `SELECT ` + apiKeyCols + ` FROM api_keys WHERE id = $1`
	qGetAPIKeyByPrefix = `SELECT ` + apiKeyCols + ` FROM api_keys WHERE prefix = $1`
	qListAPIKeys       = `SELECT ` + apiKeyCols + ` FROM api_keys ORDER BY id`
	qExpireAPIKey      = `UPDATE api_keys SET expiration = $1 WHERE id = $2`
	qTouchAPIKey       = `UPDATE api_keys SET last_seen = $1 WHERE id = $2`
	qDeleteAPIKey      = `DELETE FROM api_keys WHERE id = $1`
	qRehashAPIKey      = `UPDATE api_keys SET hash = $1 WHERE id = $2 AND hash = $3`
)

// Policy.
const (
	qInsertPolicy = `INSERT INTO policies (data, updated_at) VALUES ($1, $2) RETURNING id`
	qDeletePolicy = `DELETE FROM policies WHERE id = $1`
	qGetPolicy    = `SELECT data, updated_at FROM policies ORDER BY id DESC LIMIT 1`
)
