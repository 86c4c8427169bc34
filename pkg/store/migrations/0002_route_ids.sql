-- 0002_route_ids: stable IDs for routes.
--
-- Headscale 0.23–0.25 kept one row per (node, prefix) in a routes table and
-- its CLI and API (`headscale routes list|enable|disable|delete`,
-- /api/v1/routes) name a route by that row's ID. Here what a node
-- announces lives in its host info and what is approved in
-- nodes.approved_routes; this table only gives each (node, prefix) pair an
-- ID that stays the same across restarts. Rows are added when routes are
-- listed and removed with their node (or by `routes delete`); a pair that
-- is no longer announced or approved keeps its row, so it gets the same
-- ID back if it returns.
CREATE TABLE route_ids (
	id         {{ID_PK}},
	node_id    BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	prefix     TEXT   NOT NULL,
	created_at BIGINT NOT NULL,
	CONSTRAINT route_ids_node_prefix_key UNIQUE (node_id, prefix)
);
