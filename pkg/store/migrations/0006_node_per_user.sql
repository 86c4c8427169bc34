-- 0006_node_per_user: a machine may have a node per user.
--
-- As in Headscale, a machine that logs in as another user (web
-- registration, OIDC, a pre-auth key of that user) gets a new node for
-- that user and its earlier node stays as it was (listed, offline, until
-- it is deleted or expires). Machine keys are therefore no longer unique;
-- a plain index keeps lookups by machine key fast. Node keys stay unique.
--
-- PostgreSQL drops the constraint. SQLite cannot drop a table constraint:
-- the table is rebuilt (SQLite's "other kinds of table schema changes"),
-- inside the migration's transaction, where foreign keys stay enforced.
-- Dropping the old table deletes its rows first, which would cascade to
-- route_ids: those rows are kept aside and put back. The ID high-water
-- mark in sqlite_sequence is carried over, so no deleted node's ID is
-- handed out again.

-- {{IF postgres}}
ALTER TABLE nodes DROP CONSTRAINT nodes_machine_key_key;
-- {{END}}

-- {{IF sqlite}}
CREATE TABLE nodes_0006 (
	id              {{ID_PK}},
	machine_key     TEXT    NOT NULL,
	node_key        TEXT    NOT NULL,
	disco_key       TEXT    NOT NULL DEFAULT '',
	endpoints       TEXT    NOT NULL DEFAULT '[]',
	hostinfo        TEXT    NULL,
	ipv4            TEXT    NULL,
	ipv6            TEXT    NULL,
	hostname        TEXT    NOT NULL DEFAULT '',
	given_name      TEXT    NOT NULL,
	user_id         BIGINT  NULL REFERENCES users (id) ON DELETE RESTRICT,
	register_method TEXT    NOT NULL DEFAULT '',
	tags            TEXT    NOT NULL DEFAULT '[]',
	auth_key_id     BIGINT  NULL REFERENCES pre_auth_keys (id) ON DELETE SET NULL,
	ephemeral       BOOLEAN NOT NULL DEFAULT FALSE,
	last_seen       BIGINT  NULL,
	expiry          BIGINT  NULL,
	approved_routes TEXT    NOT NULL DEFAULT '[]',
	created_at      BIGINT  NOT NULL,
	updated_at      BIGINT  NOT NULL,
	approved        BOOLEAN NOT NULL DEFAULT TRUE,
	CONSTRAINT nodes_node_key_key UNIQUE (node_key),
	CONSTRAINT nodes_given_name_key UNIQUE (given_name),
	CONSTRAINT nodes_ipv4_key UNIQUE (ipv4),
	CONSTRAINT nodes_ipv6_key UNIQUE (ipv6)
);

INSERT INTO nodes_0006 (id, machine_key, node_key, disco_key, endpoints, hostinfo, ipv4, ipv6, hostname,
	given_name, user_id, register_method, tags, auth_key_id, ephemeral, last_seen, expiry, approved_routes,
	created_at, updated_at, approved)
SELECT id, machine_key, node_key, disco_key, endpoints, hostinfo, ipv4, ipv6, hostname,
	given_name, user_id, register_method, tags, auth_key_id, ephemeral, last_seen, expiry, approved_routes,
	created_at, updated_at, approved
FROM nodes;

DELETE FROM sqlite_sequence WHERE name = 'nodes_0006';
INSERT INTO sqlite_sequence (name, seq) SELECT 'nodes_0006', MAX(seq) FROM sqlite_sequence WHERE name = 'nodes' HAVING COUNT(*) > 0;

CREATE TEMP TABLE route_ids_0006 AS SELECT id, node_id, prefix, created_at FROM route_ids;
DROP TABLE nodes;
ALTER TABLE nodes_0006 RENAME TO nodes;
INSERT INTO route_ids (id, node_id, prefix, created_at) SELECT id, node_id, prefix, created_at FROM temp.route_ids_0006;
DROP TABLE temp.route_ids_0006;

CREATE INDEX nodes_user_id_idx ON nodes (user_id);
CREATE INDEX nodes_auth_key_id_idx ON nodes (auth_key_id);
-- {{END}}

CREATE INDEX nodes_machine_key_idx ON nodes (machine_key);
