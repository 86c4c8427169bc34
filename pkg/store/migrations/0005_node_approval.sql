-- 0005_node_approval: device approval (node.require_approval).
--
-- A node registered while node.require_approval is on waits, unapproved,
-- until an admin approves it (`headscale nodes approve`); until then it has
-- no peers and no node has it as a peer. Every node that exists when this
-- migration runs (and every node imported from Headscale, which has no such
-- flag) is approved.
ALTER TABLE nodes ADD COLUMN approved BOOLEAN NOT NULL DEFAULT TRUE;
