-- 0008_auth_requests: pending interactive authentications shared by the
-- servers of one tailnet (issue 17): web registrations waiting for an
-- admin or an OIDC login, and SSH "check" approvals. A client's follow-up
-- request, the browser and the admin's approval may each reach a
-- different server behind the load balancer; the row is where they meet.
--
-- Created on both engines so that their schemas stay the same; only
-- servers with cluster.enabled (PostgreSQL) use it: a single server keeps
-- these in memory. Not copied by `db migrate` or backups (runtimeTables):
-- every row expires within minutes.
--
-- data is what was asked (JSON, read by the package that wrote it);
-- status is 'pending' until one server decides, and outcome is the
-- decision (JSON). claimed_until (unix ms) keeps a second decision out
-- while a server works on one (say, registers the node); a server that
-- dies meanwhile frees the row when it passes.

CREATE TABLE auth_requests (
	id            TEXT   NOT NULL PRIMARY KEY,
	kind          TEXT   NOT NULL,
	data          TEXT   NOT NULL,
	status        TEXT   NOT NULL DEFAULT 'pending',
	outcome       TEXT   NOT NULL DEFAULT '',
	claimed_until BIGINT NOT NULL DEFAULT 0,
	created_at    BIGINT NOT NULL,
	expires_at    BIGINT NOT NULL
);
CREATE INDEX auth_requests_expires_at_idx ON auth_requests (expires_at);
