-- A Headscale 0.29.2 database, written for the tests (not by Headscale):
-- database_versions names the release; tagged nodes have no user (node 1);
-- node 2 lost its user to 0.29.0's bug and gets it back from its key; node 3
-- has neither user nor tags nor key; expiry NULL means never.
CREATE TABLE migrations(id text,PRIMARY KEY(id));
INSERT INTO migrations VALUES('202501221827');
INSERT INTO migrations VALUES('202501311657');
INSERT INTO migrations VALUES('202502070949');
INSERT INTO migrations VALUES('202502131714');
INSERT INTO migrations VALUES('202502171819');
INSERT INTO migrations VALUES('202505091439');
INSERT INTO migrations VALUES('202505141324');
INSERT INTO migrations VALUES('202507021200');
INSERT INTO migrations VALUES('202510311551');
INSERT INTO migrations VALUES('202511101554-drop-old-idx');
INSERT INTO migrations VALUES('202511011637-preauthkey-bcrypt');
INSERT INTO migrations VALUES('202511122344-remove-newline-index');
INSERT INTO migrations VALUES('202511131445-node-forced-tags-to-tags');
INSERT INTO migrations VALUES('202601121700-migrate-hostinfo-request-tags');
INSERT INTO migrations VALUES('202602201200-clear-tagged-node-user-id');
INSERT INTO migrations VALUES('202605221435-clear-zero-time-node-expiry');
INSERT INTO migrations VALUES('202606181200-recover-null-tags-node-user-id');
CREATE TABLE users(
  id integer PRIMARY KEY AUTOINCREMENT,
  name text,
  display_name text,
  email text,
  provider_identifier text,
  provider text,
  profile_pic_url text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
CREATE TABLE pre_auth_keys(
  id integer PRIMARY KEY AUTOINCREMENT,
  key text,
  prefix text,
  hash blob,
  user_id integer,
  reusable numeric,
  ephemeral numeric DEFAULT false,
  used numeric DEFAULT false,
  tags text,
  expiration datetime,
  created_at datetime
);
CREATE TABLE api_keys(
  id integer PRIMARY KEY AUTOINCREMENT,
  prefix text,
  hash blob,
  expiration datetime,
  last_seen datetime,
  created_at datetime
);
CREATE TABLE nodes(
  id integer PRIMARY KEY AUTOINCREMENT,
  machine_key text,
  node_key text,
  disco_key text,
  endpoints text,
  host_info text,
  ipv4 text,
  ipv6 text,
  hostname text,
  given_name varchar(63),
  user_id integer,
  register_method text,
  tags text,
  auth_key_id integer,
  last_seen datetime,
  expiry datetime,
  approved_routes text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
CREATE TABLE policies(
  id integer PRIMARY KEY AUTOINCREMENT,
  data text,
  created_at datetime,
  updated_at datetime,
  deleted_at datetime
);
CREATE TABLE database_versions(
  id integer PRIMARY KEY,
  version text NOT NULL,
  updated_at datetime
);
INSERT INTO database_versions VALUES(1,'v0.29.2','2026-07-01 10:00:00+00:00');
INSERT INTO users VALUES(1,'frank','Frank','frank@example.org',NULL,'','','2026-07-01 10:00:00+00:00','2026-07-01 10:00:00+00:00',NULL);
INSERT INTO pre_auth_keys VALUES(1,'','Qq0-Rr1_Ss2T',X'243261243034247264507435337376356c4b4a57644b5a332f48477375737a6b767649384474586c70796e46592f4c504431304433556f5957786c75',1,1,0,0,'[]','2099-01-01 00:00:00+00:00','2026-07-01 11:00:00+00:00');
INSERT INTO api_keys VALUES(1,'Zy_x-Wv98765',X'2432612430342431773238383778564a5430656e4861634f4353466c4f326378486e4b576872503070552f684e30415537666a774c4569626b563561',NULL,'2026-07-02 12:00:00+00:00','2026-07-01 12:00:00+00:00');
INSERT INTO nodes VALUES(1,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','','[]','{}','100.64.0.1','fd7a:115c:a1e0::1','tagged-box','tagged-box',NULL,'authkey','["tag:a"]',1,'2026-07-02 10:00:00+00:00',NULL,'["0.0.0.0/0","::/0"]','2026-07-01 11:05:00+00:00','2026-07-02 10:00:00+00:00',NULL);
INSERT INTO nodes VALUES(2,'mkey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','nodekey:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07','','[]','{}','100.64.0.2','fd7a:115c:a1e0::2','frank-laptop','frank-laptop',NULL,'authkey','null',1,NULL,NULL,NULL,'2026-07-01 11:06:00+00:00','2026-07-01 11:06:00+00:00',NULL);
INSERT INTO nodes VALUES(3,'mkey:7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193','nodekey:7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193','','[]','{}','100.64.0.3','fd7a:115c:a1e0::3','orphan','orphan',NULL,'cli','[]',NULL,NULL,NULL,NULL,'2026-07-01 11:07:00+00:00','2026-07-01 11:07:00+00:00',NULL);
INSERT INTO policies VALUES(1,'{"tagOwners": {"tag:a": ["frank@"]}}','2026-07-01 12:00:00+00:00','2026-07-01 12:00:00+00:00',NULL);
