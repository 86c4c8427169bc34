-- 0007_cluster: the change log and the tables of several servers on one
-- database (issue 17), and row versions for compare-and-swap edits.
--
-- Created on both engines so that their schemas stay the same; only
-- PostgreSQL uses the cluster tables (SQLite is one server). None of them
-- is copied by `db migrate` or backups: they describe the servers running
-- on a database, not the tailnet (see runtimeTables in clog.go).
--
-- change_log_head holds exactly one row. A writing transaction adds its
-- records' count to it as its last statement and takes their numbers
-- from it; the row lock, held until commit, makes the numbers gap-free
-- and in commit order.

CREATE TABLE change_log_head (
	id  INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	seq BIGINT  NOT NULL
);
INSERT INTO change_log_head (id, seq) VALUES (1, 0);

-- One row per fact a write committed, in commit order. No foreign keys:
-- records outlive the rows they name.
CREATE TABLE change_log (
	seq     BIGINT NOT NULL PRIMARY KEY,
	origin  TEXT   NOT NULL,
	kind    TEXT   NOT NULL,
	node_id BIGINT NULL,
	user_id BIGINT NULL,
	data    TEXT   NOT NULL,
	at      BIGINT NOT NULL
);

-- The servers serving this tailnet, one row per process start.
CREATE TABLE cluster_servers (
	id          TEXT   NOT NULL PRIMARY KEY,
	name        TEXT   NOT NULL,
	started_at  BIGINT NOT NULL,
	expires_at  BIGINT NOT NULL,
	applied_seq BIGINT NOT NULL DEFAULT 0,
	version     TEXT   NOT NULL,
	noise_pub   TEXT   NOT NULL,
	policy_hash TEXT   NOT NULL DEFAULT '',
	config_hash TEXT   NOT NULL DEFAULT ''
);

-- Which live server holds a map session of a node.
CREATE TABLE node_sessions (
	node_id   BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	server_id TEXT   NOT NULL REFERENCES cluster_servers (id) ON DELETE CASCADE,
	since     BIGINT NOT NULL,
	PRIMARY KEY (node_id, server_id)
);
CREATE INDEX node_sessions_server_id_idx ON node_sessions (server_id);

-- Leases of jobs that run once per tailnet; epoch grows with every change
-- of holder (the fencing token).
CREATE TABLE cluster_leases (
	name       TEXT   NOT NULL PRIMARY KEY,
	holder     TEXT   NOT NULL,
	epoch      BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);

-- The primary router of each subnet route, as the jobs leader decided.
CREATE TABLE route_primaries (
	prefix  TEXT   NOT NULL PRIMARY KEY,
	node_id BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE
);
CREATE INDEX route_primaries_node_id_idx ON route_primaries (node_id);

-- Bumped by every durable write of the row (not by the periodic write of
-- endpoints, host info and last-seen times). 1 for rows that predate it:
-- every row has a version a compare-and-swap can name.
ALTER TABLE nodes ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
