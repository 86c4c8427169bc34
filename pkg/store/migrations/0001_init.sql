-- 0001_init: the initial schema.
--
-- Portable SQL only: it must run unchanged on SQLite and PostgreSQL.
-- {{ID_PK}} is the one dialect-specific piece (an auto-assigned, never
-- reused 64-bit primary key) and is substituted when the migration is
-- applied. Times are BIGINT unix milliseconds (UTC); NULL means "never".
-- Byte strings (key hashes) are lowercase hex TEXT.

CREATE TABLE users (
	id              {{ID_PK}},
	name            TEXT    NOT NULL,
	display_name    TEXT    NOT NULL DEFAULT '',
	email           TEXT    NOT NULL DEFAULT '',
	profile_pic_url TEXT    NOT NULL DEFAULT '',
	provider        TEXT    NOT NULL DEFAULT '',
	provider_id     TEXT    NOT NULL DEFAULT '',
	created_at      BIGINT  NOT NULL,
	CONSTRAINT users_name_key UNIQUE (name)
);

CREATE TABLE pre_auth_keys (
	id         {{ID_PK}},
	prefix     TEXT    NOT NULL,
	hash       TEXT    NOT NULL,
	user_id    BIGINT  NULL REFERENCES users (id) ON DELETE CASCADE,
	reusable   BOOLEAN NOT NULL DEFAULT FALSE,
	ephemeral  BOOLEAN NOT NULL DEFAULT FALSE,
	used       BOOLEAN NOT NULL DEFAULT FALSE,
	tags       TEXT    NOT NULL DEFAULT '[]',
	expiration BIGINT  NULL,
	created_at BIGINT  NOT NULL,
	CONSTRAINT pre_auth_keys_prefix_key UNIQUE (prefix)
);

CREATE INDEX pre_auth_keys_user_id_idx ON pre_auth_keys (user_id);

CREATE TABLE nodes (
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
	CONSTRAINT nodes_machine_key_key UNIQUE (machine_key),
	CONSTRAINT nodes_node_key_key UNIQUE (node_key),
	CONSTRAINT nodes_given_name_key UNIQUE (given_name),
	-- NULL (not '') is stored for an unallocated address, and UNIQUE
	-- ignores NULLs on both SQLite and PostgreSQL.
	CONSTRAINT nodes_ipv4_key UNIQUE (ipv4),
	CONSTRAINT nodes_ipv6_key UNIQUE (ipv6)
);

CREATE INDEX nodes_user_id_idx ON nodes (user_id);
CREATE INDEX nodes_auth_key_id_idx ON nodes (auth_key_id);

CREATE TABLE api_keys (
	id         {{ID_PK}},
	prefix     TEXT   NOT NULL,
	hash       TEXT   NOT NULL,
	expiration BIGINT NULL,
	last_seen  BIGINT NULL,
	created_at BIGINT NOT NULL,
	CONSTRAINT api_keys_prefix_key UNIQUE (prefix)
);

-- Every SetPolicy appends a row; the newest row is the current policy, and
-- older rows are kept as a history.
CREATE TABLE policies (
	id         {{ID_PK}},
	data       TEXT   NOT NULL,
	updated_at BIGINT NOT NULL
);
